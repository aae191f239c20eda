"""Shared test setup. Fixtures live in tests/support/, one module per area."""

import os

# Tests never reach a model hub: every checkpoint is made by the tests themselves.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The deployment's internal API secret (flint.security.internal): replicas and front-end workers the tests start,
# in this process or in processes it spawns, share it as a deployment's would.
os.environ.setdefault("FLINT_INTERNAL_TOKEN", "test-deployment-internal-token")



def pytest_sessionstart(session):
    """Build the native kernels once, in parallel, before any test starts a replica that needs them."""
    import sys

    from flint.engine import kernels

    kernels.prebuild(say=lambda line: print(line, file=sys.__stderr__, flush=True))


pytest_plugins = [
    "support.checkpoints",
    "support.services",
]
