"""Routing policies pick replicas from registry records (pure functions, hand-written records, seeded RNGs)."""

from collections import Counter

import pytest

from flint.frontend.routing import PowerOfTwoChoices, SessionAffinity, make_policy
from flint.replica.registry import ReplicaInfo


def replica(rid: str, running: int = 0, waiting: int = 0, kv: float = 0.0) -> ReplicaInfo:
    return ReplicaInfo(replica_id=rid, address=f"{rid}:1", model="m", max_context_tokens=512,
                       running=running, waiting=waiting, kv_used_fraction=kv)


def new_sessions(workers: int, sessions_per_worker: int, replicas: list[ReplicaInfo], *, seed: int) -> Counter:
    """Each worker routes its new sessions (no affinity) with its own policy and its own in-flight counts, all
    from the same registry snapshot, interleaved as concurrent arrivals would be."""
    policies = [make_policy("affinity", seed=seed + w) for w in range(workers)]
    inflight = [Counter() for _ in range(workers)]
    placed = Counter()
    for _ in range(sessions_per_worker):
        for w in range(workers):
            chosen = policies[w].choose(replicas, inflight=inflight[w])
            inflight[w][chosen.replica_id] += 1
            placed[chosen.replica_id] += 1
    return placed


def test_new_sessions_from_several_workers_spread_over_the_replicas():
    replicas = [replica(f"r{i}") for i in range(4)]            # one snapshot: all idle, as every worker sees it
    placed = new_sessions(workers=4, sessions_per_worker=8, replicas=replicas, seed=7)
    assert sum(placed.values()) == 32
    assert set(placed) == {r.replica_id for r in replicas}, placed
    # Power-of-two choices on each worker's own counts: no replica gets more than twice its share of 8.
    assert max(placed.values()) <= 16, placed
    # Same seeds, same placement.
    assert new_sessions(workers=4, sessions_per_worker=8, replicas=replicas, seed=7) == placed


def test_one_worker_keeps_its_own_requests_balanced():
    replicas = [replica("a"), replica("b")]
    policy, inflight = PowerOfTwoChoices(seed=1), Counter()
    for _ in range(10):
        inflight[policy.choose(replicas, inflight=inflight).replica_id] += 1
    assert inflight == {"a": 5, "b": 5}   # with two replicas both are always drawn: the emptier one wins


def test_power_of_two_prefers_fewer_own_requests_over_registry_load():
    replicas = [replica("busy-elsewhere", running=5), replica("mine", running=0)]
    chosen = PowerOfTwoChoices(seed=3).choose(replicas, inflight={"mine": 7})
    assert chosen.replica_id == "busy-elsewhere"


def test_power_of_two_breaks_ties_by_registry_load():
    replicas = [replica("a", running=3), replica("b", running=1, kv=0.5), replica("c", running=1, kv=0.1)]
    picks = {PowerOfTwoChoices(seed=s).choose(replicas[1:]).replica_id for s in range(10)}
    assert picks == {"c"}
    assert "a" not in {PowerOfTwoChoices(seed=s).choose(replicas).replica_id for s in range(20)}


def test_affinity_keeps_session_on_its_replica_even_if_busier():
    replicas = [replica("a", running=3), replica("b")]
    assert SessionAffinity().choose(replicas, affinity="a", inflight={"a": 9}).replica_id == "a"


def test_affinity_survives_a_burst_of_new_sessions():
    """Sessions that already have a replica stay there while new sessions spread (prefix-cache routing)."""
    replicas = [replica(f"r{i}") for i in range(3)]
    policy, inflight = make_policy("affinity", seed=5), Counter()
    for i in range(30):
        inflight[policy.choose(replicas, inflight=inflight).replica_id] += 1           # a new session
        assert policy.choose(replicas, affinity="r2", inflight=inflight).replica_id == "r2"  # an old one
    assert min(inflight.values()) >= 5, inflight


def test_affinity_falls_back_when_replica_gone_or_saturated():
    policy = SessionAffinity(max_waiting=2, max_kv_used_fraction=0.9, fallback=PowerOfTwoChoices(seed=0))
    replicas = [replica("a", running=1, waiting=2), replica("b", running=1), replica("c", running=2, kv=0.95)]
    assert policy.choose(replicas[:2], affinity="a").replica_id == "b"   # a: queue at the limit
    assert policy.choose(replicas[1:], affinity="c").replica_id == "b"   # c: KV cache nearly full
    assert policy.choose(replicas[1:], affinity="gone").replica_id == "b"


def test_make_policy_rejects_unknown_names():
    with pytest.raises(ValueError, match="least_loaded"):
        make_policy("random")
