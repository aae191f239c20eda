"""Routing policies pick replicas from registry records (pure functions, hand-written records)."""

import pytest

from flint.frontend.routing import LeastLoaded, SessionAffinity, make_policy
from flint.replica.registry import ReplicaInfo


def replica(rid: str, running: int = 0, waiting: int = 0, kv: float = 0.0) -> ReplicaInfo:
    return ReplicaInfo(replica_id=rid, address=f"{rid}:1", model="m", max_context_tokens=512,
                       running=running, waiting=waiting, kv_used_fraction=kv)


def test_least_loaded_picks_fewest_requests_then_least_kv():
    replicas = [replica("a", running=3), replica("b", running=1, kv=0.5), replica("c", running=1, kv=0.1)]
    assert LeastLoaded().choose(replicas).replica_id == "c"


def test_affinity_keeps_session_on_its_replica_even_if_busier():
    replicas = [replica("a", running=3), replica("b")]
    assert SessionAffinity().choose(replicas, affinity="a").replica_id == "a"


def test_affinity_falls_back_to_least_loaded_when_replica_gone_or_saturated():
    policy = SessionAffinity(max_waiting=2, max_kv_used_fraction=0.9)
    replicas = [replica("a", running=1, waiting=2), replica("b", running=1), replica("c", running=2, kv=0.95)]
    assert policy.choose(replicas, affinity="a").replica_id == "b"  # a: queue at the limit
    assert policy.choose(replicas, affinity="c").replica_id == "b"  # c: KV cache nearly full
    assert policy.choose(replicas, affinity="gone").replica_id == "b"


def test_make_policy_rejects_unknown_names():
    with pytest.raises(ValueError, match="least_loaded"):
        make_policy("random")
