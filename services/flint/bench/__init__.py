"""Benchmarks: `flint bench engine` (flint.bench.engine) and `flint bench cluster`."""
