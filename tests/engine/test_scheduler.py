"""Scheduler policy on its own (no model): budgets, priorities, admission against KV."""

import time

import numpy as np
import torch

from flint.engine.config import EngineConfig
from flint.engine.kv_cache import PagedKVCache
from flint.engine.request import Request
from flint.engine.scheduler import Scheduler
from flint.engine.types import SamplingParams


def _setup(budget=64, kv_tokens=4096, max_batch=8):
    config = EngineConfig(prefill_tokens_per_step=budget, max_batch_size=max_batch, block_size=4)
    kv = PagedKVCache(num_layers=1, num_kv_heads=1, head_dim=4, dtype=torch.float32,
                      budget_bytes=kv_tokens * 32, block_size=4)
    return Scheduler(config, kv), kv


def _req(rid, prompt_len, *, bulk=False, max_tokens=8, first_token=1):
    return Request(request_id=rid, prompt_ids=np.arange(first_token, first_token + prompt_len),
                   sampling=SamplingParams(), max_tokens=max_tokens, namespace="m", interactive=not bulk,
                   speculate=False, arrival_s=time.time(), arrival_mono=time.perf_counter())


def _advance(scheduled):
    """What the engine does after a step: computed tokens move forward; decodes produce a token."""
    for s in scheduled:
        if s.is_decode:
            s.req.append([7])
        s.req.num_computed += s.num_tokens
        if not s.req.in_prefill and s.req.num_tokens == s.req.prompt_len:
            s.req.append([7])


def test_big_prefill_is_chunked_and_never_stalls_running_decodes():
    sched, _ = _setup(budget=64)
    short = _req("short", 10)
    sched.add(short)
    _advance(sched.schedule())                          # short: prefilled, now decoding
    sched.add(_req("long", 1000))
    for _ in range(5):
        step = sched.schedule()
        by_id = {s.req.request_id: s for s in step}
        assert by_id["short"].is_decode and by_id["short"].num_tokens == 1
        assert by_id["long"].num_tokens == 63           # what is left of the 64-token budget
        assert sum(s.num_tokens for s in step) <= 64
        _advance(step)


def test_interactive_requests_are_admitted_before_earlier_bulk_ones():
    sched, _ = _setup(budget=40)
    sched.add(_req("bulk", 30, bulk=True))
    sched.add(_req("interactive", 30))
    first = sched.schedule()
    assert [s.req.request_id for s in first] == ["interactive", "bulk"]
    assert [s.num_tokens for s in first] == [30, 10]


def test_admission_waits_for_kv_and_batch_room():
    sched, kv = _setup(kv_tokens=64, max_batch=8)
    sched.add(_req("a", 40))                             # 40 + 8 tokens = 12 blocks of 16
    sched.add(_req("b", 40, first_token=500))            # does not fit next to a
    step = sched.schedule()
    assert [s.req.request_id for s in step] == ["a"] and sched.num_waiting == 1
    _advance(step)
    a = step[0].req
    sched.remove(a)
    kv.release(a)                                        # a's prompt goes to the prefix cache...
    assert kv.radix.cached_tokens == 40
    assert [s.req.request_id for s in sched.schedule()] == ["b"]   # ...and is evicted to admit b
    assert kv.radix.cached_tokens == 0


def test_batch_size_limit():
    sched, _ = _setup(max_batch=2)
    for i in range(3):
        sched.add(_req(f"r{i}", 4))
    assert len(sched.schedule()) == 2 and sched.num_waiting == 1
