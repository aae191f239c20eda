"""Fixtures that make tiny HF-format checkpoints (filled in by the engine-model work)."""
