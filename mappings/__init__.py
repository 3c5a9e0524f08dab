"""Shipped mappings (YAML), installed with the package so a plain pip install finds its defaults."""
