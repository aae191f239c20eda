"""Open documents of a session, in Redis: a base text plus a log of edits, one version per edit.

A keystroke appends one small edit to the log (a Lua script: compare the
base version, append, bump the version, refresh the TTLs; atomic, so two
workers cannot both move a document from version n); it never rewrites the
text. Every `compact_every_edits` edits the worker that holds the text
folds the log into a new base. Any front-end worker or engine replica
rebuilds a version from the base and the log, so a worker that dies loses
nothing and the next keystroke may land anywhere.

Keys (prefix `flint` by default; all expire with the session, refreshed on every edit):
  {p}:doc:{session_id}:{document_id}      hash: version, base_version, base_text, path, encoding, tenant
  {p}:doc:{session_id}:{document_id}:log  list, one msgpack [version_after, [[start, end, text], ...]] per
                                          version (code-point offsets, flint.doctext.Edit, applied in order)
  {p}:docs:{tenant}                       sorted set of the tenant's documents (score = expiry, ms)

Bounds: `max_document_chars` per document (open and every edit) and
`max_documents_per_tenant` open documents at once, both RESOURCE_EXHAUSTED
with what to change. A stale base version is FAILED_PRECONDITION carrying
the server's version (`FailedPrecondition.document_version`).

Public API (stable):
    DocumentLimits(max_document_chars, max_documents_per_tenant, compact_every_edits)
    DocumentStore(redis, key_prefix, *, ttl_s, limits); .key(session_id, document_id)
    .open(...); .append_edits(key, base_version, edits, *, tenant, session_key) -> (version, log_length)
    .compact(key, version, text); .load(key, version=None) -> StoredDocument; .edits(key, after, upto)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgpack

from flint.doctext import Edit
from flint.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted

DOCUMENT_ID_CHARS = "A-Za-z0-9._/-"

_OPEN = """
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[3], KEYS[1]) and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[3], tonumber(ARGV[1]) + tonumber(ARGV[2]), KEYS[1])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'version', ARGV[4], 'base_version', ARGV[4], 'base_text', ARGV[5],
           'path', ARGV[6], 'encoding', ARGV[7], 'tenant', ARGV[8])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# -> {1, new_version, log_length} | {0, server_version} (stale base) | {-1} (unknown document)
_EDIT = """
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return {-1} end
if v ~= ARGV[1] then return {0, tonumber(v)} end
local nv = tonumber(v) + 1
local n = redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'version', nv)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], tonumber(ARGV[4]) + tonumber(ARGV[3]), KEYS[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return {1, nv, n}
"""

# Fold the log into the base if the document is still at ARGV[1]; returns 1 when done.
_COMPACT = """
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'base_version', ARGV[1], 'base_text', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"""


@dataclass(frozen=True)
class DocumentLimits:
    max_document_chars: int = 2_000_000     # ~500K tokens of code: above the 128K-token context
    max_documents_per_tenant: int = 256
    compact_every_edits: int = 256          # log entries before the text is folded into a new base

    @classmethod
    def from_dict(cls, data: dict) -> "DocumentLimits":
        names = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidArgument(f"documents: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
        return cls(**data)

    def __post_init__(self) -> None:
        for name in ("max_document_chars", "max_documents_per_tenant", "compact_every_edits"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgument(f"documents: {name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class StoredDocument:
    key: str
    version: int
    text: str
    path: str
    encoding: str
    tenant: str


class DocumentStore:
    def __init__(self, redis, key_prefix: str, *, ttl_s: float, limits: DocumentLimits | None = None):
        self.redis = redis
        self.prefix = key_prefix
        self.limits = limits or DocumentLimits()
        self._ttl_ms = int(ttl_s * 1000)
        self._open = redis.register_script(_OPEN)
        self._edit = redis.register_script(_EDIT)
        self._compact = redis.register_script(_COMPACT)

    def key(self, session_id: str, document_id: str) -> str:
        return f"{self.prefix}:doc:{session_id}:{document_id}"

    def _tenant_key(self, tenant: str) -> str:
        return f"{self.prefix}:docs:{tenant}"

    def check_size(self, chars: int, document_id: str) -> None:
        if chars > self.limits.max_document_chars:
            raise ResourceExhausted(
                f"document {document_id!r} would be {chars} characters; the limit is "
                f"{self.limits.max_document_chars}: send a smaller file or the part around the cursor")

    async def open(self, *, session_id: str, tenant: str, document_id: str, path: str, text: str, version: int,
                   encoding: str) -> str:
        self.check_size(len(text), document_id)
        key = self.key(session_id, document_id)
        ok = await self._open(keys=[key, key + ":log", self._tenant_key(tenant)],
                              args=[int(time.time() * 1000), self._ttl_ms, self.limits.max_documents_per_tenant,
                                    version, text, path, encoding, tenant])
        if not ok:
            raise ResourceExhausted(
                f"this tenant has {self.limits.max_documents_per_tenant} documents open, the limit: close "
                "sessions you no longer use or wait for them to expire", retry_after_ms=self._ttl_ms)
        return key

    async def append_edits(self, key: str, base_version: int, edits: list[Edit], *, tenant: str,
                           session_key: str) -> tuple[int, int]:
        entry = msgpack.packb([base_version + 1, [[e.start, e.end, e.text] for e in edits]])
        result = await self._edit(keys=[key, key + ":log", self._tenant_key(tenant), session_key],
                                  args=[base_version, entry, self._ttl_ms, int(time.time() * 1000)])
        if result[0] == -1:
            raise NotFound(_unknown(key))
        if result[0] == 0:
            raise stale(key, base_version, int(result[1]))
        return int(result[1]), int(result[2])

    async def compact(self, key: str, version: int, text: str) -> bool:
        return bool(await self._compact(keys=[key, key + ":log"], args=[version, text]))

    async def load(self, key: str, version: int | None = None) -> StoredDocument:
        """The document at `version` (default: its latest), rebuilt from the base and the log."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.lrange(key + ":log", 0, -1)
            fields, log = await pipe.execute()
        if not fields:
            raise NotFound(_unknown(key))
        f = {k.decode(): v for k, v in fields.items()}
        latest, base_version = int(f["version"]), int(f["base_version"])
        want = latest if version is None else version
        if not base_version <= want <= latest:
            raise stale(key, want, latest)
        text = f["base_text"].decode()
        for entry in log:
            after, edits = msgpack.unpackb(entry)
            if after > want:
                break
            for start, end, repl in edits:
                text = text[:start] + repl + text[end:]
        return StoredDocument(key, want, text, f["path"].decode(), f["encoding"].decode(), f["tenant"].decode())

    async def edits(self, key: str, after: int, upto: int) -> list[Edit] | None:
        """The logged edits from version `after` to `upto`, or None when the log no longer has them all."""
        versions = [msgpack.unpackb(e) for e in await self.redis.lrange(key + ":log", 0, -1)]
        picked = [(v, edits) for v, edits in versions if after < v <= upto]
        if len(picked) != upto - after:
            return None
        return [Edit(s, e, t) for _, edits in picked for s, e, t in edits]


def check_document_id(document_id: str) -> None:
    import re

    if not re.fullmatch(f"[{DOCUMENT_ID_CHARS}]{{1,256}}", document_id or ""):
        raise InvalidArgument(f"document_id {document_id[:64]!r} must be 1-256 characters of [{DOCUMENT_ID_CHARS}]")


def stale(key: str, sent: int, server: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"document {key.rsplit(':', 1)[-1]!r} is at version {server} on the server, not {sent}: send its full "
        f"text again (open it) or edits based on version {server}", document_version=server)


def _unknown(key: str) -> str:
    return (f"document {key.rsplit(':', 1)[-1]!r} is not open in this session (or expired with it): open it "
            "with its full text first")
