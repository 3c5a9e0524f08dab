"""Shared conformance suites that every connector's tests subclass."""

import pytest

# the suites' assertions live outside test modules: have pytest explain them as it does in tests
pytest.register_assert_rewrite("tests.conformance.crm", "tests.conformance.channel")
