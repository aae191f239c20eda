"""Fair shares between tenants (issue #13, Medium 4): one tenant's long or unread streams filling a replica's
batch or KV cache must not keep another tenant's request from starting; one tenant alone still uses the
whole replica. Decided by step counts: the scheduler on its own, and the real engine on the demo checkpoint."""

import time

import numpy as np
import pytest
from test_preemption import BLOCK_BYTES, CODE, make_engine  # noqa: F401 - the engine fixture
from test_scheduler import _setup as scheduler_setup

from flint.engine.fair_share import QueueShares
from flint.engine.request import Request, Status
from flint.engine.types import Failed, Final, GenerateRequest, SamplingParams
from flint.errors import ResourceExhausted


# -------------------------------------------------------------------- the scheduler on its own
def _setup(max_batch=4, kv_tokens=4096, **overrides):
    return scheduler_setup(budget=512, kv_tokens=kv_tokens, max_batch=max_batch, **overrides)


_clock = iter(range(1, 1_000_000))


def _req(rid, prompt_len, tenant, *, bulk=False, max_tokens=8, first_token=1):
    return Request(request_id=rid, prompt_ids=np.arange(first_token, first_token + prompt_len),
                   sampling=SamplingParams(), max_tokens=max_tokens, namespace=f"m\x00{tenant}", interactive=not bulk,
                   speculate=False, arrival_s=time.time(), arrival_mono=float(next(_clock)) * 1e-6, tenant=tenant)


def _step(sched):
    """One step as the engine applies it; returns (scheduled ids, preempted ids)."""
    plan = sched.schedule(0.0)
    for s in plan.scheduled:
        s.req.num_computed += s.num_tokens
        if s.req.num_computed == s.req.num_tokens:
            s.req.append([7])
        if s.req.num_output >= s.req.max_tokens:
            sched.remove(s.req)
            sched.kv.release(s.req)
            s.req.status = Status.FINISHED
    return [s.req.request_id for s in plan.scheduled], [r.request_id for r in plan.preempted]


def test_a_tenant_whose_streams_fill_the_batch_gives_a_slot_to_another_tenant_at_once():
    """The soak's case: the hostile tenant's unread streams held all of a replica's batch slots."""
    sched, kv = _setup(max_batch=4)
    hogs = [_req(f"a{i}", 8, "a", max_tokens=10_000, first_token=100 * i) for i in range(4)]
    for r in hogs:
        sched.add(r)
    for _ in range(3):
        _step(sched)
    assert len(sched.running) == 4
    victim = _req("b", 8, "b", max_tokens=3, first_token=5000)
    sched.add(victim)
    scheduled, preempted = _step(sched)
    assert "b" in scheduled and preempted == ["a3"]          # the latest of the tenant over its share
    for _ in range(3):
        _step(sched)
    assert victim.finished
    for _ in range(3):                                         # and a3 gets its slot back
        _step(sched)
    assert hogs[3].status is Status.RUNNING


def test_a_tenant_at_its_share_cannot_take_a_slot_back_and_nobody_thrashes():
    sched, _ = _setup(max_batch=4)
    for i in range(4):
        sched.add(_req(f"a{i}", 8, "a", max_tokens=10_000, first_token=100 * i))
    _step(sched)
    for i in range(3):
        sched.add(_req(f"b{i}", 8, "b", max_tokens=10_000, first_token=5000 + 100 * i))
    preempted = []
    for _ in range(100):
        preempted += _step(sched)[1]
    assert sorted(preempted) == ["a2", "a3"]                  # b took its share (2 of 4) once, and kept it
    assert sorted(r.request_id for r in sched.running) == ["a0", "a1", "b0", "b1"]


def test_bulk_work_never_preempts_another_tenants_interactive_work_for_its_share():
    sched, _ = _setup(max_batch=2)
    for i in range(2):
        sched.add(_req(f"a{i}", 8, "a", max_tokens=10_000, first_token=100 * i))
    _step(sched)
    sched.add(_req("b", 8, "b", bulk=True, max_tokens=2, first_token=5000))
    for _ in range(10):
        scheduled, preempted = _step(sched)
        assert "b" not in scheduled and not preempted


def test_kv_growth_preempts_the_tenant_most_over_its_share_not_the_latest_arrival():
    sched, kv = _setup(kv_tokens=160, max_batch=8, kv_growth_tokens=4)      # 40 blocks, 20 per tenant
    for i in range(3):
        sched.add(_req(f"a{i}", 12, "a", max_tokens=10_000, first_token=100 * i))
    _step(sched)
    b = _req("b", 12, "b", max_tokens=10_000, first_token=5000)            # arrives last
    sched.add(b)
    preempted = []
    for _ in range(40):
        preempted += _step(sched)[1]
    assert preempted and "b" not in preempted
    assert b.status is Status.RUNNING and b.num_output >= 30


def test_one_tenant_alone_uses_every_slot_and_all_of_the_kv():
    sched, kv = _setup(kv_tokens=400, max_batch=4, kv_growth_tokens=4)      # 100 blocks
    reqs = [_req(f"a{i}", 20, "a", max_tokens=70, first_token=100 * i) for i in range(4)]
    for r in reqs:
        sched.add(r)
    preempted, peak = [], 0
    for _ in range(80):
        preempted += _step(sched)[1]
        peak = max(peak, kv.num_blocks - kv.allocator.num_free)
    assert all(r.finished for r in reqs) and not preempted
    assert peak >= 0.9 * kv.num_blocks                          # 4 x 90 tokens: 90 of 100 blocks at once


# -------------------------------------------------------------------- the queue
def test_queue_keeps_room_for_other_active_tenants_and_for_one_refused_at_a_full_queue():
    q = QueueShares(6, clock=lambda: 0.0)
    for _ in range(6):
        q.take("a")                                    # alone: the whole queue
    with pytest.raises(ResourceExhausted, match="queue is full"):
        q.take("b")                                    # refused, but b now claims its share
    q.release("a")
    with pytest.raises(ResourceExhausted, match="fair share is 3"):
        q.take("a")                                    # the free place is b's
    q.take("b")
    q.release("a")
    q.release("a")
    q.take("b")
    with pytest.raises(ResourceExhausted):             # a 3, b 2: b is owed 1 more, and 1 place is free
        q.take("a")
    q.take("b")
    assert len(q) == 6


# -------------------------------------------------------------------- the real engine
ENGINE = dict(kv_cache_bytes=48 * BLOCK_BYTES, kv_growth_tokens=8, num_threads=1)


def test_engine_another_tenant_starts_within_two_steps_while_one_tenant_fills_the_kv(make_engine):
    engine = make_engine(**ENGINE)                             # 48 blocks = 384 tokens
    for i in range(6):
        engine.add_request(GenerateRequest(f"long{i}", prefix=f"# {i}\n" + CODE, cache_namespace="a",
                                           sampling=SamplingParams(max_tokens=300)))
    for _ in range(41):
        engine.step()
    b = engine.prepare(GenerateRequest("b", prefix=CODE * 2, cache_namespace="b",
                                       sampling=SamplingParams(max_tokens=8)))
    assert engine.kv.reclaimable_blocks() < engine.kv.blocks_for(b.prompt_len + 1)   # tenant a holds the KV
    engine.add(b)
    steps, final = 0, None
    while final is None and steps < 300:
        events = engine.step()
        steps += 1
        assert not any(isinstance(e, Failed) for e in events)
        final = next((e for e in events if isinstance(e, Final) and e.request_id == "b"), final)
        if steps == 2:
            assert b.num_output >= 1, "tenant b's request did not start within 2 steps"
    assert final is not None and final.completion_tokens == 8 and steps <= 12
    finals = [e for e in engine.run_until_done() if isinstance(e, Final)]
    assert sorted(e.request_id for e in finals) == [f"long{i}" for i in range(6)]


def test_engine_one_tenant_alone_fills_the_kv_without_preemption(make_engine):
    engine = make_engine(**{**ENGINE, "kv_cache_bytes": 64 * BLOCK_BYTES})   # 512 tokens
    for i in range(5):                                         # 5 x (53 + 40 + 1) tokens: 60 of 64 blocks
        engine.add_request(GenerateRequest(f"long{i}", prefix=f"# {i}\n" + CODE, cache_namespace="a",
                                           sampling=SamplingParams(max_tokens=40)))
    peak = 0
    while engine.has_work():
        engine.step()
        peak = max(peak, engine.kv.num_blocks - engine.kv.allocator.num_free)
    assert engine.metrics.preemptions._value.get() == 0
    assert peak >= 0.9 * engine.kv.num_blocks


def test_engine_queue_refuses_the_flooding_tenant_not_the_other_one(make_engine):
    engine = make_engine(**ENGINE, max_waiting=4, max_batch_size=2)   # 6 requests in all
    for i in range(6):
        engine.add_request(GenerateRequest(f"a{i}", prefix=CODE, cache_namespace="a",
                                           sampling=SamplingParams(max_tokens=4)))
    with pytest.raises(ResourceExhausted):
        engine.add_request(GenerateRequest("b0", prefix=CODE, cache_namespace="b"))
    engine.abort("a5")
    engine.step()
    with pytest.raises(ResourceExhausted, match="fair share"):
        engine.add_request(GenerateRequest("a6", prefix=CODE, cache_namespace="a"))
    engine.add_request(GenerateRequest("b0", prefix=CODE, cache_namespace="b", sampling=SamplingParams(max_tokens=4)))
    finals = [e.request_id for e in engine.run_until_done() if isinstance(e, Final)]
    assert "b0" in finals
