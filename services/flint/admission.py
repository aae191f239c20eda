"""Admission control: refuse work early and clearly instead of queueing it forever.

Two places decide, both answering RESOURCE_EXHAUSTED with a retry delay
(google.rpc.RetryInfo in the status details), never a hang:
  * per engine replica, in the replica itself (`check_replica_load`): its
    queue is at `max_waiting` or its KV cache at `max_kv_used_fraction`; the
    front-end also skips a replica whose last published load says so, and
    refuses when every replica is saturated (`check_routable`);
  * per tenant, at the front-end (`TenantSlots`): at most
    `max_inflight_per_tenant` requests of one tenant run at once across all
    workers, counted in Redis as a sorted set of request ids whose scores are
    expiry times, so slots held by a worker that died free themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from flint.config import from_mapping
from flint.errors import InvalidArgument, ResourceExhausted


@dataclass(frozen=True)
class AdmissionConfig:
    """`FrontendConfig.admission` and `ReplicaConfig.admission`."""

    max_waiting: int = 64                  # requests queued in one replica before it refuses more
    max_kv_used_fraction: float = 0.98     # KV cache use above which a replica refuses new requests
    max_inflight_per_tenant: int = 0       # running requests per tenant across workers; 0 = unlimited
    retry_after_ms: int = 250              # suggested wait sent with RESOURCE_EXHAUSTED
    slot_ttl_s: float = 900.0              # a tenant slot not released by then (worker died) frees itself

    def __post_init__(self) -> None:
        for name in ("max_waiting", "max_inflight_per_tenant", "retry_after_ms"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InvalidArgument(f"admission.{name} must be an integer >= 0, got {value!r}")
        if not 0 < self.max_kv_used_fraction <= 1:
            raise InvalidArgument(f"admission.max_kv_used_fraction must be in (0, 1], got {self.max_kv_used_fraction}")
        if self.slot_ttl_s <= 0:
            raise InvalidArgument(f"admission.slot_ttl_s must be > 0, got {self.slot_ttl_s}")

    @classmethod
    def from_dict(cls, data: dict) -> "AdmissionConfig":
        return from_mapping(cls, data, where="admission config")


def saturation(config: AdmissionConfig, *, waiting: int, kv_used_fraction: float) -> str:
    """Why a replica with this load must refuse new work ("" = it may accept)."""
    if config.max_waiting and waiting >= config.max_waiting:
        return f"its queue holds {waiting} requests (limit {config.max_waiting})"
    if kv_used_fraction >= config.max_kv_used_fraction:
        return f"its KV cache is {kv_used_fraction:.0%} full (limit {config.max_kv_used_fraction:.0%})"
    return ""


def below_average_share(counts, tenant: str) -> bool:
    """Several tenants have requests (`counts`: tenant -> requests) and `tenant` holds fewer than the average.
    Saturation refusals skip such a tenant: the engine's fair shares (flint.engine.fair_share) make room for
    it at the expense of the tenant over its share, instead of refusing everyone alike."""
    active = {t for t, n in counts.items() if n} | {tenant}
    return len(active) > 1 and counts.get(tenant, 0) * len(active) < sum(counts.values())


def engine_below_share(engine, tenant: str) -> bool:
    """`below_average_share` of the engine behind a replica (False for stand-in engines without the hook)."""
    hook = getattr(getattr(engine, "engine", None), "below_fair_share", None)
    return bool(hook is not None and hook(tenant))


def check_replica_load(config: AdmissionConfig, replica_id: str, load, *, below_fair_share: bool = False) -> None:
    """Raise RESOURCE_EXHAUSTED when this replica (engine LoadInfo `load`) is over its limits, unless the caller's
    tenant is below its fair share."""
    if below_fair_share:
        return
    why = saturation(config, waiting=load.waiting, kv_used_fraction=load.kv_used_fraction)
    if why:
        raise ResourceExhausted(f"engine replica {replica_id} is saturated: {why}; retry after "
                                f"{config.retry_after_ms} ms or add replicas", retry_after_ms=config.retry_after_ms)


def check_routable(config: AdmissionConfig, replica, *, below_fair_share: bool = False) -> None:
    """Front-end side: refuse when the routing policy's best choice is saturated (so all of them are), unless
    the caller's tenant is below its fair share of this worker's requests (the replica then decides)."""
    if below_fair_share:
        return
    why = saturation(config, waiting=replica.waiting, kv_used_fraction=replica.kv_used_fraction)
    if why:
        raise ResourceExhausted(f"every engine replica is saturated (the least loaded, {replica.replica_id}: "
                                f"{why}); retry after {config.retry_after_ms} ms",
                                retry_after_ms=config.retry_after_ms)


async def add_expiring_member(redis, key: str, member: str, ttl_s: float) -> int:
    """Add `member` to the sorted set `key` (scored by its expiry), drop expired members; returns the count.

    Members held by a worker that died expire by themselves."""
    now = time.time()
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(key, "-inf", now)
        pipe.zadd(key, {member: now + ttl_s})
        pipe.zcard(key)
        pipe.pexpire(key, int(ttl_s * 1000))
        _, _, count, _ = await pipe.execute()
    return count


class TenantSlots:
    """Concurrent requests per tenant, shared by all front-end workers through Redis."""

    def __init__(self, redis, key_prefix: str, config: AdmissionConfig):
        self._redis = redis
        self._prefix = key_prefix
        self._config = config

    def key(self, tenant: str) -> str:
        return f"{self._prefix}:tenant:{tenant or '-'}:inflight"

    async def acquire(self, tenant: str, request_id: str) -> bool:
        """Take a slot for `request_id`, or raise RESOURCE_EXHAUSTED; False when there is no limit."""
        limit = self._config.max_inflight_per_tenant
        if not limit:
            return False
        count = await add_expiring_member(self._redis, self.key(tenant), request_id, self._config.slot_ttl_s)
        if count > limit:
            await self.release(tenant, request_id)
            raise ResourceExhausted(f"tenant {tenant or 'anonymous'} already has {limit} requests running (its "
                                    f"limit); wait for one to finish or retry after {self._config.retry_after_ms} ms",
                                    retry_after_ms=self._config.retry_after_ms)
        return True

    async def release(self, tenant: str, request_id: str) -> None:
        await self._redis.zrem(self.key(tenant), request_id)

    async def count(self, tenant: str) -> int:
        return await self._redis.zcount(self.key(tenant), time.time(), "+inf")


class RequestGuard:
    """Everything a front-end checks before a request may take an engine slot, in cost order.

    Size limits (no I/O), the tenant's rate limit (one Redis round trip), the
    replica's saturation (from the registry the router just read), then the
    tenant's concurrency slot. `admit` returns the release callback for the slot.
    """

    def __init__(self, *, admission: AdmissionConfig, security, redis, key_prefix: str, session_ttl_s: float = 3600.0):
        from flint.security.limits import TenantCaps, TenantSessions
        from flint.security.ratelimit import RateLimiter

        self.admission = admission
        self.security = security
        self.slots = TenantSlots(redis, key_prefix, admission)
        self.rate = (RateLimiter(redis, key_prefix, per_s=security.rate_limit_per_s, burst=security.rate_burst)
                     if security.rate_limit_per_s else None)
        self.caps = TenantCaps({"stream": security.max_streams_per_tenant, "resume": security.max_resumes_per_tenant})
        self.sessions = TenantSessions(redis, key_prefix, limit=security.max_sessions_per_tenant, ttl_s=session_ttl_s)
        self.inflight: dict[str, int] = {}   # admitted and not yet released requests per tenant, on this worker

    async def check_rate(self, tenant: str) -> None:
        """The tenant's rate limit for calls that start no request (Interrupt, Resume, Open): one Redis INCR."""
        if self.rate is not None:
            await self.rate.check(tenant)

    async def admit(self, request, *, request_id: str, tenant: str, replica, engine_request=None):
        from flint.security.limits import check_fits_context, check_request_limits

        check_request_limits(request, self.security)
        if engine_request is not None:
            check_fits_context(engine_request, replica)  # before the replica tokenizes it or Redis stores it
        if self.rate is not None:
            await self.rate.check(tenant)
        check_routable(self.admission, replica, below_fair_share=below_average_share(self.inflight, tenant))
        held = await self.slots.acquire(tenant, request_id)
        self.inflight[tenant] = self.inflight.get(tenant, 0) + 1
        released = False

        async def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.inflight[tenant] -= 1
            if not self.inflight[tenant]:
                del self.inflight[tenant]
            if held:
                await self.slots.release(tenant, request_id)

        return release
