"""Benchmarks that print figures and append them to bench/results.md (python -m bench.<name> --help)."""
