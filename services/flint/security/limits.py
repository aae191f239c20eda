"""Limits: the size of one request (checked before any Redis or engine work is spent on it), and how many
streams, resumes and sessions one tenant may hold."""

from __future__ import annotations

import contextlib

from flint.errors import InvalidArgument, NotFound, ResourceExhausted
from flint.security.config import SecurityConfig


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


MAX_MODEL_NAME_BYTES = 256


def check_model_name(model: str) -> str:
    """INVALID_ARGUMENT for a model name no deployment serves (too long); never echoed whole."""
    if _size(model) > MAX_MODEL_NAME_BYTES:
        raise InvalidArgument(f"model name is {_size(model)} bytes; at most {MAX_MODEL_NAME_BYTES} are allowed: "
                              "leave `model` empty for the default")
    return model


def shown(text: str, limit: int = 64) -> str:
    """`text` quoted for a message, cut to `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def unknown_model(model: str, served: str) -> NotFound:
    return NotFound(f"model {shown(model)} is not served here; served models: {served}. "
                    "Leave `model` empty for the default")


def max_token_bytes(tokenizer) -> int:
    """UTF-8 bytes of the tokenizer's longest vocabulary entry (0 when it has none to read)."""
    try:
        vocab = tokenizer.hf.get_vocab(with_added_tokens=True)
    except Exception:  # noqa: BLE001 - stand-in engines (benchmarks) have no tokenizer
        return 0
    return max((len(token.encode("utf-8")) for token in vocab), default=0)


def check_fits_context(engine_request, replica) -> None:
    """INVALID_ARGUMENT when the prompt cannot fit the model's context whatever its tokenization: every token
    covers at most `replica.max_token_bytes` bytes. Costs a byte count, no tokenizer and no Redis."""
    if not replica.max_token_bytes:
        return
    r = engine_request
    size = sum(_size(t) for t in (r.prefix, r.suffix, r.code, r.instruction, r.path))
    size += sum(_size(f.content) + _size(f.path) for f in r.context)
    at_least = -(-size // replica.max_token_bytes)
    if at_least > replica.max_context_tokens:
        raise InvalidArgument(f"the prompt is {size} bytes, at least {at_least} tokens, more than the model's "
                              f"context of {replica.max_context_tokens} tokens: trim the prefix, suffix or context")


def check_request_limits(request, config: SecurityConfig) -> None:
    """INVALID_ARGUMENT naming the limit when a Complete/Edit request carries too much."""
    if len(request.context) > config.max_context_files:
        raise InvalidArgument(f"{len(request.context)} context files sent; at most {config.max_context_files} are "
                              "allowed: send the most relevant ones")
    total = 0
    for f in request.context:
        size = _size(f.content) + _size(f.path)
        if size > config.max_context_file_bytes:
            raise InvalidArgument(f"context file {f.path[:200]!r} is {size} bytes; at most "
                                  f"{config.max_context_file_bytes} bytes per file: send a smaller excerpt")
        total += size
    for name in ("prefix", "suffix", "code", "instruction", "path"):
        if hasattr(request, name):
            total += _size(getattr(request, name))
    if total > config.max_prompt_bytes:
        raise InvalidArgument(f"the request carries {total} bytes of text (prefix, suffix, code, instruction and "
                              f"context together); at most {config.max_prompt_bytes} are allowed: trim the context")


class TenantCaps:
    """Concurrent calls of one kind per tenant on this worker (Session/Complete/Edit/Resume streams, Resumes).

    `hold(kind, tenant)` is a context manager: RESOURCE_EXHAUSTED when the tenant already holds `limit` of
    that kind here, so one tenant's thousands of idle streams or resume floods cannot use up a worker.
    """

    def __init__(self, limits: dict[str, int], retry_after_ms: int = 1000):
        self._limits = limits
        self._held: dict[tuple[str, str], int] = {}
        self._retry_after_ms = retry_after_ms

    def held(self, kind: str, tenant: str) -> int:
        return self._held.get((kind, tenant), 0)

    @contextlib.contextmanager
    def hold(self, kind: str, tenant: str):
        key = (kind, tenant)
        limit = self._limits[kind]
        if self._held.get(key, 0) >= limit:
            raise ResourceExhausted(f"tenant {tenant or 'anonymous'} already has {limit} {kind} calls open on this "
                                    f"front-end (its limit); close some or retry after {self._retry_after_ms} ms",
                                    retry_after_ms=self._retry_after_ms)
        self._held[key] = self._held.get(key, 0) + 1
        try:
            yield
        finally:
            self._held[key] -= 1
            if not self._held[key]:
                del self._held[key]


class TenantSessions:
    """Sessions per tenant, counted across workers in Redis (a sorted set of session ids scored by expiry)."""

    def __init__(self, redis, key_prefix: str, *, limit: int, ttl_s: float, retry_after_ms: int = 1000):
        self._redis = redis
        self._prefix = key_prefix
        self._limit = limit
        self._ttl_s = ttl_s
        self._retry_after_ms = retry_after_ms

    def key(self, tenant: str) -> str:
        return f"{self._prefix}:tenant:{tenant or '-'}:sessions"

    async def add(self, tenant: str, session_id: str) -> None:
        """Count a new session of `tenant`, or RESOURCE_EXHAUSTED when it has `limit` live ones."""
        from flint.admission import add_expiring_member

        key = self.key(tenant)
        if await add_expiring_member(self._redis, key, session_id, self._ttl_s) > self._limit:
            await self._redis.zrem(key, session_id)
            raise ResourceExhausted(f"tenant {tenant or 'anonymous'} has {self._limit} open sessions (its limit); "
                                    "reuse one (Open with its session_id) or wait for idle ones to expire",
                                    retry_after_ms=self._retry_after_ms)
