"""flint: a latency-first serving system for code models."""

__version__ = "0.1.0"
