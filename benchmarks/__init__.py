"""Timing and memory benchmarks (``make bench`` = ``python -m benchmarks.run_all``); not part of the tests."""
