"""Tests of the example connector packages in ``examples/``."""
