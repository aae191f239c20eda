"""The front-end's view of the engine replicas: registry reads, routing, channels.

The registry is re-read at most every `refresh_interval_s` (loads in it are
one heartbeat old anyway); one gRPC channel is kept per replica address.
"""

from __future__ import annotations

import asyncio
import time

import grpc

from flint.errors import NotFound, Unavailable
from flint.frontend.routing import RoutingPolicy
from flint.replica.registry import ReplicaInfo, ReplicaRegistry
from flint.security.internal import EngineClient


class ReplicaPool:
    def __init__(self, registry: ReplicaRegistry, policy: RoutingPolicy, *, wait_s: float, internal_token: str,
                 refresh_interval_s: float = 0.25):
        self._registry = registry
        self._policy = policy
        self._wait_s = wait_s
        self._refresh_interval_s = refresh_interval_s
        self._internal_token = internal_token
        self._cached: list[ReplicaInfo] = []
        self._cached_at = -1e9
        self._channels: dict[str, tuple[grpc.aio.Channel, EngineClient]] = {}

    async def replicas(self, *, fresh: bool = False) -> list[ReplicaInfo]:
        if fresh or time.monotonic() - self._cached_at > self._refresh_interval_s:
            self._cached = await self._registry.list()
            self._cached_at = time.monotonic()
        return self._cached

    async def pick(self, *, model: str = "", affinity: str = "") -> ReplicaInfo:
        """A routable replica serving `model` ("" = any); waits up to `wait_s` for one to register."""
        deadline = time.monotonic() + self._wait_s
        fresh = False
        while True:
            replicas = [r for r in await self.replicas(fresh=fresh) if r.routable]
            if replicas:
                serving = [r for r in replicas if not model or r.model == model]
                if not serving:
                    models = ", ".join(sorted({r.model for r in replicas}))
                    raise NotFound(f"model {model!r} is not served here; served models: {models}. "
                                   "Leave `model` empty for the default")
                return self._policy.choose(serving, affinity=affinity)
            if time.monotonic() > deadline:
                raise Unavailable(f"no engine replica is available (waited {self._wait_s:g} s); retry shortly",
                                  retry_after_ms=1000)
            fresh = True
            await asyncio.sleep(0.1)

    async def default_model(self) -> ReplicaInfo | None:
        replicas = [r for r in await self.replicas() if r.routable]
        return min(replicas, key=lambda r: r.replica_id) if replicas else None

    def stub(self, replica: ReplicaInfo) -> EngineClient:
        entry = self._channels.get(replica.address)
        if entry is None:
            channel = grpc.aio.insecure_channel(replica.address, options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ])
            entry = (channel, EngineClient(channel, self._internal_token))  # calls carry the internal token
            self._channels[replica.address] = entry
        return entry[1]

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel, _ in channels.values():
            await channel.close()
