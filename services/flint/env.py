"""Every environment variable flint reads, in one place.

Nothing is read at import time: callers ask for a value when they need it,
so tests and the CLI can set variables before calling in.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where flint keeps what it makes once (the demo checkpoint).

    `FLINT_CACHE_DIR` overrides the per-user cache directory of the platform.
    """
    override = os.environ.get("FLINT_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("flint"))


def redis_url() -> str | None:
    """`FLINT_REDIS_URL`: default for `--redis-url` (unset = embedded Valkey)."""
    return os.environ.get("FLINT_REDIS_URL") or None


def server_address() -> str | None:
    """`FLINT_ADDRESS`: default front-end address for `flint complete/edit/status`."""
    return os.environ.get("FLINT_ADDRESS") or None


def ray_address() -> str | None:
    """`FLINT_RAY_ADDRESS`, else Ray's own `RAY_ADDRESS` (KubeRay sets it in every pod): default for
    `--ray-address` (neither set = a local Ray instance)."""
    return os.environ.get("FLINT_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS") or None


def ci() -> bool:
    """`CI`: set (to anything but empty/0/false) by CI systems; progress displays stay quiet."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def api_key() -> str | None:
    """`FLINT_API_KEY`: API key `flint complete/edit` send when the service requires one."""
    return os.environ.get("FLINT_API_KEY") or None
