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


def kernel_cache_dir() -> Path:
    """Where native kernels are built and cached (`flint.engine.kernels`).

    `FLINT_KERNEL_CACHE_DIR` overrides `<cache dir>/kernels`; tests that use a fresh
    `FLINT_CACHE_DIR` keep the machine's built kernels through it.
    """
    override = os.environ.get("FLINT_KERNEL_CACHE_DIR")
    return Path(override).expanduser() if override else cache_dir() / "kernels"


REDIS_URL_ENV = "FLINT_REDIS_URL"


def redis_url() -> str | None:
    """`FLINT_REDIS_URL`: default for `--redis-url` (unset = embedded Valkey)."""
    return os.environ.get(REDIS_URL_ENV) or None


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


def allow_plaintext_key() -> bool:
    """`FLINT_ALLOW_PLAINTEXT_KEY`: let `flint complete/edit` send FLINT_API_KEY without TLS to a non-loopback address."""
    return os.environ.get("FLINT_ALLOW_PLAINTEXT_KEY", "").strip().lower() not in ("", "0", "false", "no")


EVENT_LOOPS = ("uvloop", "asyncio")


def event_loop() -> str:
    """`FLINT_EVENT_LOOP`: the event loop of a front-end worker process, `uvloop` (default) or `asyncio`."""
    value = os.environ.get("FLINT_EVENT_LOOP", "").strip().lower() or EVENT_LOOPS[0]
    if value not in EVENT_LOOPS:
        from flint.errors import InvalidArgument

        raise InvalidArgument(f"FLINT_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, got {value!r}")
    return value


INTERNAL_TOKEN = "FLINT_INTERNAL_TOKEN"
INTERNAL_TOKEN_FILE = "FLINT_INTERNAL_TOKEN_FILE"


def internal_token() -> str:
    """`FLINT_INTERNAL_TOKEN`: the deployment's internal engine API secret (flint.security.internal)."""
    return os.environ.get(INTERNAL_TOKEN, "").strip()


def internal_token_file() -> str:
    """`FLINT_INTERNAL_TOKEN_FILE`: a file holding that secret (read when FLINT_INTERNAL_TOKEN is unset)."""
    return os.environ.get(INTERNAL_TOKEN_FILE, "")


PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prometheus_multiproc_dir() -> str | None:
    """`PROMETHEUS_MULTIPROC_DIR`: set by `flint serve` for its front-end workers so that metrics are
    collected across them (read by prometheus_client itself when it is imported, and here at scrape time)."""
    return os.environ.get(PROMETHEUS_MULTIPROC_ENV) or None
