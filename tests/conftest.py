"""Shared test setup. Fixtures live in tests/support/, one module per area."""

import os

# Tests never reach a model hub: every checkpoint is made by the tests themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "support.checkpoints",
    "support.services",
]
