"""Benchmarks: suites (YAML), the grid of fits they describe, and the result tables."""
