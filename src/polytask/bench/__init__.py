"""Benchmarks (long runs, never part of the test suite): ``polytask bench <name>``."""
