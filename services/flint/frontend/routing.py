"""Which engine replica serves a request: small pluggable policies.

A policy sees the routable replicas (healthy, not draining, serving the
requested model) and the session's affinity (the replica that served its
last request and so holds its KV prefix). Policies are pure functions of
their inputs so they are tested with hand-written replica records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

from flint.replica.registry import ReplicaInfo


class RoutingPolicy(ABC):
    @abstractmethod
    def choose(self, replicas: Sequence[ReplicaInfo], *, affinity: str = "") -> ReplicaInfo:
        """Pick one of `replicas` (non-empty, all routable)."""


class LeastLoaded(RoutingPolicy):
    """Fewest requests in flight, then least KV used; ties broken by id for determinism."""

    def choose(self, replicas: Sequence[ReplicaInfo], *, affinity: str = "") -> ReplicaInfo:
        return min(replicas, key=lambda r: (r.load, r.replica_id))


class SessionAffinity(RoutingPolicy):
    """Keep a session on the replica holding its prefix unless that replica is saturated.

    Saturated = its queue is at least `max_waiting` deep or its KV cache is at
    least `max_kv_used_fraction` full: waiting there would cost more than
    recomputing the prefix elsewhere.
    """

    def __init__(self, max_waiting: int = 4, max_kv_used_fraction: float = 0.9, fallback: RoutingPolicy | None = None):
        self.max_waiting = max_waiting
        self.max_kv_used_fraction = max_kv_used_fraction
        self.fallback = fallback or LeastLoaded()

    def choose(self, replicas: Sequence[ReplicaInfo], *, affinity: str = "") -> ReplicaInfo:
        for replica in replicas:
            if replica.replica_id == affinity and not self.saturated(replica):
                return replica
        return self.fallback.choose(replicas, affinity=affinity)

    def saturated(self, replica: ReplicaInfo) -> bool:
        return replica.waiting >= self.max_waiting or replica.kv_used_fraction >= self.max_kv_used_fraction


def make_policy(name: str) -> RoutingPolicy:
    policies = {"affinity": SessionAffinity, "least_loaded": LeastLoaded}
    if name not in policies:
        raise ValueError(f"unknown routing policy {name!r}; choose one of {', '.join(policies)}")
    return policies[name]()
