"""Benchmarks for mh-watchd; each writes its numbers to bench/results/<name>.json."""
