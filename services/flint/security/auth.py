"""API keys per tenant, checked by one interceptor on the public service.

A key is a random token shown once at creation; only its SHA-256 is stored,
in a JSON file (`api_keys_file`) or a Redis hash (`{prefix}:apikeys`,
sha256 hex -> tenant), so a leaked key store reveals no key. The keys are
256-bit random, so a fast hash is enough (no password stretching needed).
Calls to flint.v1.Flint must carry `authorization: Bearer <key>` (or
`x-api-key: <key>`); health checks and reflection stay open for probes.
The interceptor binds the call's tenant (`flint.security.context`) for
everything its handler runs: request records, sessions, journals and the
prefix-cache namespace are all tagged with it.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import secrets
import time
from pathlib import Path

import grpc

from flint.errors import FlintError, InvalidArgument, Unauthenticated, Unavailable
from flint.security.context import reset_tenant, set_tenant

PUBLIC_SERVICE_PREFIX = "/flint.v1.Flint/"
_TENANT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


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


def add_key_to_file(path: str | Path, tenant: str) -> str:
    """Create a key for `tenant`, store its hash in the file; returns the key (shown once)."""
    path = Path(path).expanduser()
    keys = read_key_file(path)
    key = new_key()
    keys[hash_key(key)] = check_tenant(tenant)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"keys": [{"tenant": t, "sha256": h} for h, t in keys.items()]}, indent=1))
    tmp.chmod(0o600)
    tmp.replace(path)  # atomic: a reader never sees half a file
    return key


async def add_key_to_redis(redis, key_prefix: str, tenant: str) -> str:
    key = new_key()
    await redis.hset(f"{key_prefix}:apikeys", hash_key(key), check_tenant(tenant))
    return key


class KeyStore:
    """Looks up the tenant of a presented key: file keys (loaded once), then Redis (cached briefly)."""

    def __init__(self, *, file_keys: dict[str, str], redis=None, key_prefix: str = "flint",
                 cache_ttl_s: float = 5.0):
        self._file_keys = file_keys
        self._redis = redis
        self._hash_key = f"{key_prefix}:apikeys"
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._cache_ttl_s = cache_ttl_s

    async def tenant_of(self, key: str) -> str | None:
        digest = hash_key(key)
        tenant = self._file_keys.get(digest)
        if tenant is not None or self._redis is None:
            return tenant
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        value = await self._redis.hget(self._hash_key, digest)
        tenant = value.decode() if value is not None else None
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (tenant, time.monotonic() + self._cache_ttl_s)
        return tenant


def presented_key(metadata) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
            return value[7:].strip()
        if key == "x-api-key" and isinstance(value, str):
            return value.strip()
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid key; otherwise the handler runs with its tenant bound."""

    def __init__(self, keys: KeyStore):
        self._keys = keys

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(PUBLIC_SERVICE_PREFIX):
            return handler
        key = presented_key(handler_call_details.invocation_metadata)
        try:
            tenant = await self._keys.tenant_of(key) if key else None
        except Exception as exc:  # noqa: BLE001 - Redis down: the key cannot be checked now
            from flint.grpc_status import logged

            return deny_handler(handler, Unavailable(
                logged("API keys cannot be checked right now; retry shortly",
                       f"API key lookup failed: {type(exc).__name__}: {exc}"), retry_after_ms=1000))
        if tenant is None:
            why = ("no API key sent: pass `authorization: Bearer <key>` metadata (flint.client: api_key=...)"
                   if not key else "the API key is not valid: ask your operator for a key (`flint keys create`)")
            return deny_handler(handler, Unauthenticated(why))
        return _replace_behavior(handler, _bind(handler, tenant))


def deny_handler(handler, error: FlintError | str):
    """`handler` replaced by one that ends the call with `error`'s status (a string: UNAUTHENTICATED)."""
    return _replace_behavior(handler, _deny(Unauthenticated(error) if isinstance(error, str) else error))


def _kind(handler) -> str:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        if getattr(handler, kind) is not None:
            return kind
    raise ValueError("empty handler")


def _replace_behavior(handler, make):
    kind = _kind(handler)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(make(kind, getattr(handler, kind)), handler.request_deserializer, handler.response_serializer)


def _deny(error: FlintError):
    from flint.grpc_status import abort_with

    def make(kind, _behavior):
        async def deny(request, context):
            await abort_with(context, error)

        if kind.endswith("_stream"):
            async def deny_stream(request, context):
                await abort_with(context, error)
                yield None  # unreachable: makes this an async generator

            return deny_stream
        return deny

    return make


def _bind(handler, tenant: str):
    def make(kind, behavior):
        if inspect.isasyncgenfunction(behavior):
            async def bound_stream(request, context):
                token = set_tenant(tenant)
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    reset_tenant(token)

            return bound_stream

        async def bound(request, context):
            token = set_tenant(tenant)
            try:
                return await behavior(request, context)
            finally:
                reset_tenant(token)

        return bound

    return make
