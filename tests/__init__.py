"""Test suite (a package, so ``tests.connectors`` never shadows the real ``connectors`` package)."""
