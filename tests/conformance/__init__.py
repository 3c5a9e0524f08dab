"""Shared conformance suites that every connector's tests subclass."""
