"""The front-end's view of the engine replicas: registry reads, routing, channels.

The registry is re-read at most every `refresh_interval_s` (loads in it are
one heartbeat old anyway), behind the request that finds the view that old:
a request waits for the read (two Redis round trips) only when the view is
older than twice that, or there is none yet, so routing stays off Redis on a
busy worker. One gRPC channel is kept per replica address, and with
`engine_transport = "link"` (the default) one engine link (flint.link) per
replica that publishes a link address: `Generate` goes on the link, the stall
probe's `Load` on the gRPC channel. A replica that publishes no link address
(an older version during a rolling upgrade) is called over gRPC. The channel and link of a
replica the registry no longer lists are closed at the next read that finds it gone and no call of
this worker open on it (a replica that comes back gets new ones at its next pick).

The pool also keeps this worker's own in-flight count per replica, which
the routing policy weighs: an engine call opened through `stub()` counts
until it ends, and a replica just picked counts as one more until its
engine call opens (or `RESERVATION_S` passes: the request was refused
before it reached the engine), so a burst of picks sees its own earlier picks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque

import grpc

from flint.errors import Unavailable
from flint.frontend.routing import RoutingPolicy
from flint.replica.registry import ReplicaInfo, ReplicaRegistry
from flint.security.internal import EngineClient
from flint.frontend.liveness import LivenessConfig, engine_channel_options
from flint.link.client import LinkClient
from flint.security.limits import unknown_model

log = logging.getLogger(__name__)

RESERVATION_S = 2.0   # a pick counts as in flight this long at most before its engine call opens


class ReplicaPool:
    def __init__(self, registry: ReplicaRegistry, policy: RoutingPolicy, *, wait_s: float, internal_token: str,
                 refresh_interval_s: float = 0.25, drop_s: float = 5.0, liveness: LivenessConfig | None = None,
                 engine_transport: str = "link"):
        self._registry = registry
        self.liveness = liveness or LivenessConfig()   # keepalive of the channels, the owners' engine watch
        self._policy = policy
        self._wait_s = wait_s
        self._refresh_interval_s = refresh_interval_s
        self._internal_token = internal_token
        self._use_link = engine_transport == "link"
        self._cached: list[ReplicaInfo] = []
        self._cached_at = -1e9
        self._refreshing: asyncio.Task | None = None   # the read behind a request that found the view stale
        self._drop_s = drop_s
        self._dropped: dict[str, float] = {}   # address -> monotonic time it may be routed to again
        self._channels: dict[str, tuple[grpc.aio.Channel, EngineClient]] = {}
        self._links: dict[str, LinkClient] = {}                  # link address -> this worker's link to it
        self._open: dict[str, int] = defaultdict(int)            # replica id -> engine calls open now
        self._open_at: dict[str, int] = defaultdict(int)         # replica address -> engine calls open now
        self._link_of: dict[str, str] = {}                       # replica address -> its link address in use
        self._closing: set[asyncio.Task] = set()                 # closes of gone replicas' channels and links
        self._reserved: dict[str, deque] = defaultdict(deque)    # replica id -> expiry times of picks not started

    async def replicas(self, *, fresh: bool = False) -> list[ReplicaInfo]:
        """The registered replicas, less those dropped. A view older than `refresh_interval_s` is returned
        while a read behind it replaces it; one older than twice that (or `fresh`, or none yet) is read first."""
        age_s = time.monotonic() - self._cached_at
        if fresh or age_s > 2 * self._refresh_interval_s:
            await self._refresh()
        elif age_s > self._refresh_interval_s and self._refreshing is None:
            self._refreshing = asyncio.create_task(self._refresh_behind(), name="replica registry read")
        return self._cached

    async def _refresh(self) -> None:
        now = time.monotonic()
        listed = await self._registry.list()
        if now < self._cached_at:   # a read that began later (a caller that asked for a fresh view) landed first
            return
        self._dropped = {a: until for a, until in self._dropped.items() if until > time.monotonic()}
        self._cached = [r for r in listed if r.address not in self._dropped]
        self._cached_at = now
        self._close_gone({r.address for r in listed})

    def _close_gone(self, listed: set[str]) -> None:
        """Close the channel and link of every replica address not in `listed` with no call of ours open."""
        for address in [a for a in self._channels if a not in listed and not self._open_at.get(a)]:
            channel, _ = self._channels.pop(address)
            link = self._links.pop(self._link_of.pop(address, ""), None)
            for closing in (channel.close(), link.close() if link is not None else None):
                if closing is not None:
                    task = asyncio.ensure_future(closing)
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    async def _refresh_behind(self) -> None:
        try:
            await self._refresh()
        except Exception as exc:  # noqa: BLE001 - the view ages on; a request reads it itself past twice the interval
            log.warning("reading the replica registry failed: %s", exc)
        finally:
            self._refreshing = None

    async def pick(self, *, model: str = "", affinity: str = "", exclude=frozenset()) -> ReplicaInfo:
        """A routable replica serving `model` ("" = any) and not in `exclude` (ids); waits up to `wait_s`
        for one to register."""
        deadline = time.monotonic() + self._wait_s
        fresh = False
        while True:
            replicas = [r for r in await self.replicas(fresh=fresh) if r.routable and r.replica_id not in exclude]
            if replicas:
                serving = [r for r in replicas if not model or r.model == model]
                if not serving:
                    models = ", ".join(sorted({r.model for r in replicas}))
                    raise unknown_model(model, models)
                chosen = self._policy.choose(serving, affinity=affinity, inflight=self.inflight())
                self._reserved[chosen.replica_id].append(time.monotonic() + RESERVATION_S)
                return chosen
            if time.monotonic() > deadline:
                but = " other than those that refused the connection" if exclude else ""
                raise Unavailable(f"no engine replica{but} is available (waited {self._wait_s:g} s); retry shortly",
                                  retry_after_ms=1000)
            fresh = True
            await asyncio.sleep(0.1)

    def inflight(self) -> dict[str, int]:
        """This worker's requests per replica id: engine calls open plus picks whose call has not opened."""
        now = time.monotonic()
        counts = {rid: n for rid, n in self._open.items() if n}
        for rid, expiries in list(self._reserved.items()):
            while expiries and expiries[0] <= now:
                expiries.popleft()
            if expiries:
                counts[rid] = counts.get(rid, 0) + len(expiries)
            else:
                del self._reserved[rid]
        return counts

    def _opened(self, replica_id: str, address: str) -> None:
        self._open[replica_id] += 1
        self._open_at[address] += 1
        reserved = self._reserved.get(replica_id)
        if reserved:
            reserved.popleft()

    def _closed(self, replica_id: str, address: str) -> None:
        for counts, key in ((self._open, replica_id), (self._open_at, address)):
            counts[key] -= 1
            if not counts[key]:
                del counts[key]

    def drop(self, replica: ReplicaInfo) -> None:
        """Stop routing to a replica that refused a connection, for as long as its heartbeat may still
        list it (a replica restarted at a new address is routable at once)."""
        self._dropped[replica.address] = time.monotonic() + self._drop_s
        self._cached = [r for r in self._cached if r.address != replica.address]

    async def default_model(self) -> ReplicaInfo | None:
        replicas = [r for r in await self.replicas() if r.routable]
        return min(replicas, key=lambda r: r.replica_id) if replicas else None

    def stub(self, replica: ReplicaInfo) -> "_CountingClient":
        entry = self._channels.get(replica.address)
        if entry is None:
            channel = grpc.aio.insecure_channel(replica.address, options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                *engine_channel_options(self.liveness),   # a frozen replica's streams end UNAVAILABLE
            ])
            entry = (channel, EngineClient(channel, self._internal_token))  # calls carry the internal token
            self._channels[replica.address] = entry
        generate = entry[1]
        if self._use_link and replica.link_address:
            generate = self._links.get(replica.link_address)
            if generate is None:
                generate = self._links[replica.link_address] = LinkClient(replica.link_address, self._internal_token,
                                                                          self.liveness)
                self._link_of[replica.address] = replica.link_address
        return _CountingClient(generate, entry[1], self, replica)  # open Generates count in `inflight()`

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        channels, self._channels = self._channels, {}
        links, self._links = self._links, {}
        for link in links.values():
            await link.close()
        for channel, _ in channels.values():
            await channel.close()
        if self._closing:
            await asyncio.wait(self._closing)


class _CountingClient:
    """A replica's engine client (Generate on the link or gRPC, Load on gRPC) whose Generate calls count in the
    pool's in-flight while they are open."""

    def __init__(self, generate: "LinkClient | EngineClient", client: EngineClient, pool: ReplicaPool,
                 replica: ReplicaInfo):
        self._generate = generate
        self._client = client
        self._pool = pool
        self._replica_id = replica.replica_id
        self._address = replica.address

    def Generate(self, request, **kwargs):  # noqa: N802 - the RPC's name
        call = self._generate.Generate(request, **kwargs)
        self._pool._opened(self._replica_id, self._address)
        call.add_done_callback(lambda _call: self._pool._closed(self._replica_id, self._address))
        return call

    def Load(self, request, **kwargs):  # noqa: N802
        return self._client.Load(request, **kwargs)
