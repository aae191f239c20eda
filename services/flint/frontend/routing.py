"""Which engine replica serves a request: small pluggable policies.

A policy sees the routable replicas (healthy, not draining, serving the
requested model), the session's affinity (the replica that served its last
request and so holds its KV prefix) and this front-end worker's own
in-flight counts per replica (engine calls it has open there, and picks not
yet started; `ReplicaPool` keeps them). Policies are pure functions of their
inputs (and of a seeded RNG) so they are tested with hand-written records.

Why not the least-loaded replica of the registry: every worker reads the
same snapshot (one heartbeat old), so every worker takes the same minimum and
a burst of new sessions herds onto one replica. Power-of-two choices (two
replicas drawn at random, the one this worker has fewer requests on wins)
spreads them, and each worker's counts are current, not a heartbeat old.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import Mapping, Sequence

from flint.replica.registry import ReplicaInfo

NO_INFLIGHT: Mapping[str, int] = {}


class RoutingPolicy(ABC):
    @abstractmethod
    def choose(self, replicas: Sequence[ReplicaInfo], *, affinity: str = "",
               inflight: Mapping[str, int] = NO_INFLIGHT) -> ReplicaInfo:
        """Pick one of `replicas` (non-empty, all routable); `inflight`: this worker's requests per replica id."""


class PowerOfTwoChoices(RoutingPolicy):
    """Draw two distinct replicas at random; the one with fewer of this worker's requests in flight wins, then
    the one the registry reports less loaded, then the first drawn. `seed` makes the draws reproducible."""

    def __init__(self, seed: int | None = None):
        self._rng = random.Random(seed)

    def choose(self, replicas: Sequence[ReplicaInfo], *, affinity: str = "",
               inflight: Mapping[str, int] = NO_INFLIGHT) -> ReplicaInfo:
        if len(replicas) == 1:
            return replicas[0]
        i, j = self._rng.sample(range(len(replicas)), 2)
        a, b = replicas[i], replicas[j]
        cost = lambda r: (inflight.get(r.replica_id, 0), r.load)  # noqa: E731
        return b if cost(b) < cost(a) else a


class SessionAffinity(RoutingPolicy):
    """Keep a session on the replica holding its prefix unless that replica is saturated; else `fallback`
    (power-of-two choices).

    Saturated = its queue is at least `max_waiting` deep or its KV cache is at
    least `max_kv_used_fraction` full: waiting there would cost more than
    recomputing the prefix elsewhere.
    """

    def __init__(self, max_waiting: int = 4, max_kv_used_fraction: float = 0.9, fallback: RoutingPolicy | None = None):
        self.max_waiting = max_waiting
        self.max_kv_used_fraction = max_kv_used_fraction
        self.fallback = fallback or PowerOfTwoChoices()

    def choose(self, replicas: Sequence[ReplicaInfo], *, affinity: str = "",
               inflight: Mapping[str, int] = NO_INFLIGHT) -> ReplicaInfo:
        for replica in replicas:
            if replica.replica_id == affinity and not self.saturated(replica):
                return replica
        return self.fallback.choose(replicas, affinity=affinity, inflight=inflight)

    def saturated(self, replica: ReplicaInfo) -> bool:
        return replica.waiting >= self.max_waiting or replica.kv_used_fraction >= self.max_kv_used_fraction


def make_policy(name: str, *, seed: int | None = None) -> RoutingPolicy:
    """"affinity" (the session's replica, else power-of-two choices) or "least_loaded" (power-of-two choices
    on this worker's in-flight counts, no affinity)."""
    if name == "affinity":
        return SessionAffinity(fallback=PowerOfTwoChoices(seed))
    if name == "least_loaded":
        return PowerOfTwoChoices(seed)
    raise ValueError(f"unknown routing policy {name!r}; choose one of affinity, least_loaded")
