"""``python -m bench``: run every benchmark and rewrite docs/benchmarks.md (see bench/run.py)."""

from bench.run import main

main()
