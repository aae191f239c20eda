"""The replica registry in Redis: where engine replicas are, and how loaded.

Each replica writes one msgpack record under `{prefix}:replica:{id}` with a
TTL and refreshes it every heartbeat; a replica that dies simply expires.
The set `{prefix}:replicas` indexes the ids so readers need no SCAN; ids
whose record expired are pruned by readers. Front-end workers read it to
route; `flint status` reads it to report. No torch here: front-ends import it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from flint.records import pack_record, unpack_record


@dataclass(frozen=True)
class ReplicaInfo:
    replica_id: str
    address: str                       # host:port of the replica's internal gRPC server
    model: str
    max_context_tokens: int
    running: int = 0
    waiting: int = 0
    kv_used_fraction: float = 0.0
    healthy: bool = True
    draining: bool = False
    cancelled_total: int = 0           # engine requests aborted because their caller cancelled
    max_token_bytes: int = 0           # UTF-8 bytes of the longest vocabulary entry (0 = unknown): a prompt of
                                       # N bytes is at least N / max_token_bytes tokens (the front-end's cheap check)
    updated_unix_s: float = 0.0
    link_address: str = ""             # host:port of its engine link (flint.link); "" = none (gRPC only)

    @property
    def load(self) -> float:
        """Requests in flight, with KV use breaking ties (lower is better)."""
        return self.running + self.waiting + self.kv_used_fraction

    @property
    def routable(self) -> bool:
        return self.healthy and not self.draining

    def pack(self) -> bytes:
        return pack_record(self)

    @classmethod
    def unpack(cls, data: bytes, *, where: str = "") -> "ReplicaInfo | None":
        """The record, or None (logged) when `data` is not a valid replica record."""
        return unpack_record(cls, data, where=where or "a replica key")


class ReplicaRegistry:
    """Read and write replica records through a `redis.asyncio` client."""

    def __init__(self, redis, key_prefix: str = "flint"):
        self._redis = redis
        self._prefix = key_prefix

    @property
    def index_key(self) -> str:
        return f"{self._prefix}:replicas"

    def record_key(self, replica_id: str) -> str:
        return f"{self._prefix}:replica:{replica_id}"

    async def publish(self, info: ReplicaInfo, ttl_s: float) -> None:
        info = replace(info, updated_unix_s=time.time())
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(self.record_key(info.replica_id), info.pack(), px=int(ttl_s * 1000))
            pipe.sadd(self.index_key, info.replica_id)
            await pipe.execute()

    async def remove(self, replica_id: str) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.record_key(replica_id))
            pipe.srem(self.index_key, replica_id)
            await pipe.execute()

    async def list(self) -> list[ReplicaInfo]:
        ids = sorted(i.decode() if isinstance(i, bytes) else i for i in await self._redis.smembers(self.index_key))
        if not ids:
            return []
        records = await self._redis.mget([self.record_key(i) for i in ids])
        expired = [i for i, rec in zip(ids, records) if rec is None]
        if expired:
            await self._redis.srem(self.index_key, *expired)
        infos = (ReplicaInfo.unpack(rec, where=self.record_key(i)) for i, rec in zip(ids, records) if rec is not None)
        return [info for info in infos if info is not None]  # junk records are logged and skipped
