"""Benchmarks: measured here, published in docs/benchmarks.md (never timed unit tests)."""
