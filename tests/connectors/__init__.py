"""Contract tests of the built-in connectors."""
