"""Scheduler policy on its own (no model): budgets, priorities, admission against KV, preemption,
queue timeouts and aging. Everything is decided by step counts, never by timing."""

import time

import numpy as np
import torch

from flint.engine.config import EngineConfig
from flint.engine.kv_cache import PagedKVCache
from flint.engine.request import Request, Status
from flint.engine.scheduler import Scheduler
from flint.engine.types import SamplingParams


def _setup(budget=64, kv_tokens=4096, max_batch=8, **overrides):
    config = EngineConfig(prefill_tokens_per_step=budget, max_batch_size=max_batch, block_size=4, **overrides)
    kv = PagedKVCache(num_layers=1, num_kv_heads=1, head_dim=4, dtype=torch.float32,
                      budget_bytes=kv_tokens * 32, block_size=4)
    return Scheduler(config, kv), kv


_clock = iter(range(1, 1_000_000))


def _req(rid, prompt_len, *, bulk=False, max_tokens=8, first_token=1, arrival=None):
    return Request(request_id=rid, prompt_ids=np.arange(first_token, first_token + prompt_len),
                   sampling=SamplingParams(), max_tokens=max_tokens, namespace="m", interactive=not bulk,
                   speculate=False, arrival_s=time.time(),
                   arrival_mono=float(next(_clock)) * 1e-6 if arrival is None else arrival)


def _advance(plan, sched=None):
    """What the engine does after a step: computed tokens move forward, a request whose tokens are all
    computed samples one; with `sched`, requests that reached max_tokens finish. Returns the scheduled list."""
    scheduled = plan.scheduled
    for s in scheduled:
        s.req.num_computed += s.num_tokens
        if s.req.num_computed == s.req.num_tokens:
            s.req.append([7])
        if sched is not None and s.req.num_output >= s.req.max_tokens:
            sched.remove(s.req)
            sched.kv.release(s.req)
            s.req.status = Status.FINISHED
    return scheduled


def _step(sched, now=0.0):
    return _advance(sched.schedule(now), sched)


def _ids(scheduled):
    return {s.req.request_id: s.num_tokens for s in scheduled}


def test_big_prefill_is_chunked_and_never_stalls_running_decodes():
    sched, _ = _setup(budget=64, interactive_chunk_tokens=64)   # the budget, not the chunk, bounds it here
    short = _req("short", 10)
    sched.add(short)
    _advance(sched.schedule(0.0))                          # short: prefilled, now decoding
    sched.add(_req("long", 1000))
    for _ in range(5):
        plan = sched.schedule(0.0)
        step = plan.scheduled
        by_id = {s.req.request_id: s for s in step}
        assert by_id["short"].is_decode and by_id["short"].num_tokens == 1
        assert by_id["long"].num_tokens == 63           # what is left of the 64-token budget
        assert sum(s.num_tokens for s in step) <= 64
        _advance(plan)


def test_interactive_requests_are_admitted_before_earlier_bulk_ones():
    sched, _ = _setup(budget=40)
    sched.add(_req("bulk", 30, bulk=True))
    sched.add(_req("interactive", 30))
    first = sched.schedule(0.0).scheduled
    assert [s.req.request_id for s in first] == ["interactive", "bulk"]
    assert [s.num_tokens for s in first] == [30, 10]


def test_admission_waits_for_kv_and_batch_room():
    sched, kv = _setup(kv_tokens=64, max_batch=8)
    sched.add(_req("a", 40))                             # 40 + 8 tokens = 12 blocks of 16
    sched.add(_req("b", 40, first_token=500))            # does not fit next to a
    plan = sched.schedule(0.0)
    step = plan.scheduled
    assert [s.req.request_id for s in step] == ["a"] and sched.num_waiting == 1
    _advance(plan)
    a = step[0].req
    sched.remove(a)
    kv.release(a)                                        # a's prompt goes to the prefix cache...
    assert kv.radix.cached_tokens == 40
    assert [s.req.request_id for s in sched.schedule(0.0).scheduled] == ["b"]   # ...and is evicted to admit b
    assert kv.radix.cached_tokens == 0


def test_batch_size_limit():
    sched, _ = _setup(max_batch=2)
    for i in range(3):
        sched.add(_req(f"r{i}", 4))
    assert len(sched.schedule(0.0).scheduled) == 2 and sched.num_waiting == 1


def test_a_request_that_does_not_fit_never_blocks_smaller_ones_behind_it():
    sched, kv = _setup(budget=256, kv_tokens=256)                  # 64 blocks of 4 tokens
    sched.add(_req("big1", 150, max_tokens=4, first_token=1))
    sched.add(_req("big2", 150, max_tokens=4, first_token=1000))   # does not fit next to big1
    sched.add(_req("small", 8, max_tokens=2, first_token=3000))
    first = _step(sched)
    assert _ids(first) == {"big1": 150, "small": 8}                # small skipped past big2
    finished = []
    for _ in range(10):
        for s in _step(sched):
            if s.req.finished:
                finished.append(s.req.request_id)
    assert "small" in finished and "big1" in finished
    assert "big2" in finished                                      # and big2 ran once big1 left


def test_an_interactive_request_arriving_during_a_long_bulk_prefill_gets_its_first_token_next_step():
    sched, _ = _setup(budget=2048, prefill_chunk_tokens=512, interactive_chunk_tokens=64)
    sched.add(_req("bulk", 4000, bulk=True, arrival=0.0))
    assert _ids(_step(sched, now=0.0)) == {"bulk": 512}
    keystroke = _req("key", 8, first_token=5000, max_tokens=2, arrival=1.0)
    sched.add(keystroke)
    step = _step(sched, now=1.0)
    assert _ids(step) == {"key": 8}                                # the long prefill pauses this step
    assert keystroke.num_output == 1                               # first token after 1 step
    assert _ids(_step(sched, now=1.1)) == {"key": 1, "bulk": 64}   # then both run, the long one in small chunks
    assert _ids(_step(sched, now=2.5)) == {"bulk": 512}            # no interactive work about: full chunks


def test_long_prefill_chunks_shrink_while_a_keystroke_prefills_and_interactive_long_ones_too():
    sched, _ = _setup(budget=2048, kv_tokens=16384, prefill_chunk_tokens=512, contended_chunk_tokens=32,
                      interactive_chunk_tokens=64, interactive_window_ms=1000)
    sched.add(_req("long_interactive", 4000, arrival=0.0))
    sched.add(_req("long_bulk", 4000, bulk=True, first_token=9000, arrival=0.0))
    assert _ids(_step(sched, now=0.5)) == {"long_interactive": 64, "long_bulk": 64}     # interactive arrival
    assert _ids(_step(sched, now=1.5)) == {"long_interactive": 512, "long_bulk": 512}
    sched.add(_req("key", 20, first_token=20000, max_tokens=2, arrival=5.0))
    assert _ids(_step(sched, now=5.0)) == {"key": 20, "long_interactive": 32, "long_bulk": 32}
    assert _ids(_step(sched, now=5.1)) == {"key": 1, "long_interactive": 64, "long_bulk": 64}
    assert _ids(_step(sched, now=6.1)) == {"long_interactive": 512, "long_bulk": 512}


def test_kv_grows_on_demand_so_huge_max_tokens_do_not_reserve_the_cache():
    sched, kv = _setup(budget=512, kv_tokens=1024, kv_growth_tokens=16)    # 256 blocks
    sched.add(_req("a", 16, max_tokens=1000))
    sched.add(_req("b", 16, max_tokens=1000, first_token=2000))
    sched.add(_req("small", 8, max_tokens=1, first_token=4000))
    step = _step(sched)
    assert _ids(step) == {"a": 16, "b": 16, "small": 8}
    assert [s.req.finished for s in step] == [False, False, True]
    a = step[0].req
    assert len(a.owned_blocks) * 4 < 100                           # prompt + a little, not 1016 positions
    for _ in range(40):
        _step(sched)
    assert a.num_slots >= a.num_computed + 1 and len(a.owned_blocks) * 4 <= a.num_tokens + 16 + 4


def test_when_kv_runs_out_bulk_work_is_preempted_and_resumes_where_it_was():
    sched, kv = _setup(budget=512, kv_tokens=160, kv_growth_tokens=4)     # 40 blocks
    inter = _req("inter", 60, max_tokens=60)
    bulk = _req("bulk", 60, bulk=True, max_tokens=60, first_token=500)
    sched.add(bulk)
    sched.add(inter)
    preempted = []
    for _ in range(200):
        plan = sched.schedule(0.0)
        preempted += [r.request_id for r in plan.preempted]
        if bulk.status is Status.WAITING and bulk.num_preemptions:
            outputs_at_preemption = bulk.output_ids()
        _advance(plan, sched)
        if not sched.has_work():
            break
    assert preempted and set(preempted) == {"bulk"}                 # never the interactive one
    assert inter.finished and bulk.finished
    assert inter.num_output == 60 and bulk.num_output == 60
    assert bulk.output_ids()[: len(outputs_at_preemption)] == outputs_at_preemption
    assert kv.all_free_after_clearing()                              # no block leaked


def test_a_request_that_cannot_start_within_the_queue_timeout_is_reported_not_left_waiting():
    sched, _ = _setup(budget=256, kv_tokens=64, queue_timeout_interactive_ms=500, queue_timeout_bulk_ms=2000)
    sched.add(_req("hog", 40, max_tokens=20, arrival=0.0))
    sched.add(_req("late", 40, first_token=500, arrival=0.0))
    sched.add(_req("late_bulk", 40, bulk=True, first_token=900, arrival=0.0))
    assert _ids(_step(sched, now=0.1)) == {"hog": 40}
    plan = sched.schedule(0.6)
    assert [r.request_id for r in plan.timed_out] == ["late"]
    assert sched.num_waiting == 1
    assert [r.request_id for r in sched.schedule(2.1).timed_out] == ["late_bulk"]
    assert sched.num_waiting == 0


def test_a_starving_request_goes_first_and_smaller_ones_stop_overtaking_it():
    sched, kv = _setup(budget=256, kv_tokens=128, starvation_steps=5)      # 32 blocks
    sched.add(_req("hog", 60, max_tokens=20))                               # grows to 20 blocks
    _step(sched)
    sched.add(_req("big", 60, bulk=True, first_token=1000, max_tokens=2))  # does not fit next to hog
    overtook = []
    for i in range(40):
        sched.add(_req(f"s{i}", 4, first_token=2000 + 10 * i, max_tokens=1))
        step = _step(sched)
        overtook.append(any(s.req.request_id.startswith("s") for s in step))
        if any(s.req.request_id == "big" for s in step):
            break
    else:
        raise AssertionError("the big bulk request starved")
    assert overtook[:5] == [True] * 5                               # small ones pass it while it is young
    assert not any(overtook[6:-1])                                   # once starving, nothing overtakes it
    assert len(overtook) < 25                                        # it started once hog finished


def test_a_long_prefill_paused_by_keystrokes_still_progresses():
    sched, _ = _setup(budget=2048, prefill_chunk_tokens=64, interactive_chunk_tokens=64, starvation_steps=3)
    sched.add(_req("bulk", 4000, bulk=True))
    _step(sched)
    chunks = []
    for i in range(12):
        sched.add(_req(f"k{i}", 8, first_token=5000 + 10 * i, max_tokens=1))
        chunks.append(_ids(_step(sched)).get("bulk", 0))
    assert chunks[:3] == [0, 0, 0] and 64 in chunks                  # paused, then never starved


def test_slot_map_follows_growth_admission_and_release():
    """A request hands out the same slot-map view while its slots are unchanged (the engine asks every step),
    and a fresh one once KV grows, the request is re-admitted after release, or its slots are gone."""
    sched, kv = _setup(budget=64)
    req = _req("r", 6, max_tokens=400)
    sched.add(req)
    _advance(sched.schedule(0.0))
    first = req.slot_map
    assert req.slot_map is first and first.tolist() == req.slots[: req.num_slots].tolist()
    before = req.num_slots
    assert kv.grow(req, before + 9)
    grown = req.slot_map
    assert req.num_slots > before and grown.shape[0] == req.num_slots
    assert grown.tolist() == req.slots[: req.num_slots].tolist()
    sched.remove(req)
    kv.release(req)
    req.status, req.num_computed = Status.WAITING, 0
    sched.add(req)
    _advance(sched.schedule(0.0))                          # re-admitted: a new slots tensor
    assert req.slot_map is not grown and req.slot_map.tolist() == req.slots[: req.num_slots].tolist()
