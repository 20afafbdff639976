"""Benchmarks (never timed tests): ``python -m benchmarks throughput|quality [options]``."""
