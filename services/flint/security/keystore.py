"""Where API keys live and how a presented key is looked up, revoked and re-checked.

A key is a random token shown once at creation; only its SHA-256 is stored,
in a JSON file (`api_keys_file`) or a Redis hash (`{prefix}:apikeys`,
sha256 hex -> tenant), so a leaked key store reveals no key. The keys are
256-bit random, so a fast hash is enough (no password stretching needed).

Revocation (`flint keys revoke`) takes effect within `key_recheck_s`: the
key file is re-read when its modification time changes (checked at most
every `key_recheck_s`), Redis lookups are cached for `key_recheck_s`, and
one task per worker re-checks the keys of open streams every `key_recheck_s`
and ends the streams of revoked keys (`KeyStore.watch`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Callable

from flint.errors import InvalidArgument, NotFound

log = logging.getLogger(__name__)

_TENANT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
_CACHE_MAX = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return f"flk_{secrets.token_urlsafe(32)}"


def check_tenant(tenant: str) -> str:
    if not tenant or len(tenant) > 64 or not set(tenant) <= _TENANT_CHARS:
        raise InvalidArgument(f"tenant {tenant!r} must be 1-64 characters of [A-Za-z0-9._-]")
    return tenant


def read_key_file(path: str | Path) -> dict[str, str]:
    """sha256 -> tenant from a key file (missing file = no keys)."""
    path = Path(path).expanduser()
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {entry["sha256"]: check_tenant(entry["tenant"]) for entry in data["keys"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"API key file {path} is malformed ({exc}); expected "
                              '{"keys": [{"tenant": ..., "sha256": ...}]}') from None


def _write_key_file(path: Path, keys: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"keys": [{"tenant": t, "sha256": h} for h, t in keys.items()]}, indent=1))
    tmp.chmod(0o600)
    tmp.replace(path)  # atomic: a reader never sees half a file


def add_key_to_file(path: str | Path, tenant: str) -> str:
    """Create a key for `tenant`, store its hash in the file; returns the key (shown once)."""
    path = Path(path).expanduser()
    keys = read_key_file(path)
    key = new_key()
    keys[hash_key(key)] = check_tenant(tenant)
    _write_key_file(path, keys)
    return key


def _matching(keys: dict[str, str], *, key: str, tenant: str) -> list[str]:
    digests = [hash_key(key)] if key else [h for h, t in keys.items() if t == tenant]
    found = [h for h in digests if h in keys]
    if not found:
        raise NotFound("no such key" if key else f"tenant {tenant!r} has no keys")
    return found


def revoke_in_file(path: str | Path, *, key: str = "", tenant: str = "") -> int:
    """Remove `key` (or every key of `tenant`) from the file; returns how many were removed."""
    path = Path(path).expanduser()
    keys = read_key_file(path)
    found = _matching(keys, key=key, tenant=tenant)
    for digest in found:
        del keys[digest]
    _write_key_file(path, keys)
    return len(found)


async def add_key_to_redis(redis, key_prefix: str, tenant: str) -> str:
    key = new_key()
    await redis.hset(f"{key_prefix}:apikeys", hash_key(key), check_tenant(tenant))
    return key


async def revoke_in_redis(redis, key_prefix: str, *, key: str = "", tenant: str = "") -> int:
    hash_name = f"{key_prefix}:apikeys"
    stored = {h.decode(): t.decode() for h, t in (await redis.hgetall(hash_name)).items()}
    found = _matching(stored, key=key, tenant=tenant)
    await redis.hdel(hash_name, *found)
    return len(found)


class KeyStore:
    """The tenant of a presented key: file keys (re-read when the file changes), then Redis (cached briefly)."""

    def __init__(self, *, key_file: str = "", redis=None, key_prefix: str = "flint", recheck_s: float = 2.0):
        self._key_file = Path(key_file).expanduser() if key_file else None
        self._file_keys = read_key_file(self._key_file) if self._key_file else {}
        self._file_mtime_ns = self._mtime_ns()
        self._file_checked = time.monotonic()
        self._redis = redis
        self._hash_name = f"{key_prefix}:apikeys"
        self._cache: dict[str, tuple[str | None, float]] = {}
        self.recheck_s = recheck_s
        self._watchers: dict[str, set[Callable[[], None]]] = {}
        self._watch_task: asyncio.Task | None = None

    def _mtime_ns(self) -> int:
        try:
            return self._key_file.stat().st_mtime_ns if self._key_file else 0
        except OSError:
            return -1

    def _refresh_file(self, *, force: bool = False) -> None:
        if self._key_file is None or (not force and time.monotonic() - self._file_checked < self.recheck_s):
            return
        self._file_checked = time.monotonic()
        mtime = self._mtime_ns()
        if mtime == self._file_mtime_ns:
            return
        try:
            self._file_keys = read_key_file(self._key_file)
        except InvalidArgument as exc:  # a half-edited file: keep the last good keys, say so
            log.error("API key file not reloaded: %s", exc.message)
            return
        self._file_mtime_ns = mtime
        log.info("API key file %s reloaded: %d keys", self._key_file, len(self._file_keys))

    async def tenant_of(self, key: str, *, fresh: bool = False) -> str | None:
        """The key's tenant, or None; Redis errors propagate (the caller answers UNAVAILABLE)."""
        digest = hash_key(key)
        return await self._tenant_of_digest(digest, fresh=fresh)

    async def _tenant_of_digest(self, digest: str, *, fresh: bool = False) -> str | None:
        self._refresh_file(force=fresh)
        tenant = self._file_keys.get(digest)
        if tenant is not None or self._redis is None:
            return tenant
        cached = self._cache.get(digest)
        if not fresh and cached is not None and cached[1] > time.monotonic():
            return cached[0]
        value = await self._redis.hget(self._hash_name, digest)
        tenant = value.decode() if value is not None else None
        if len(self._cache) > _CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (tenant, time.monotonic() + self.recheck_s)
        return tenant

    @contextlib.contextmanager
    def watch(self, key: str, on_revoked: Callable[[], None]):
        """Call `on_revoked` (once) if `key` stops being valid while the block runs; re-checked every recheck_s."""
        digest = hash_key(key)
        self._watchers.setdefault(digest, set()).add(on_revoked)
        if self._watch_task is None or self._watch_task.done():
            self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop(), name="API key re-check")
        try:
            yield
        finally:
            callbacks = self._watchers.get(digest)
            if callbacks is not None:
                callbacks.discard(on_revoked)
                if not callbacks:
                    del self._watchers[digest]

    async def _watch_loop(self) -> None:
        """One task per worker re-checks the keys of all open streams; it ends when none is open."""
        while self._watchers:
            await asyncio.sleep(self.recheck_s)
            for digest in list(self._watchers):
                try:
                    tenant = await self._tenant_of_digest(digest, fresh=True)
                except Exception as exc:  # noqa: BLE001 - Redis down: open streams keep going, checked later
                    log.warning("API key re-check failed (open streams keep going): %s", exc)
                    break
                if tenant is None:
                    for callback in self._watchers.pop(digest, ()):
                        callback()
