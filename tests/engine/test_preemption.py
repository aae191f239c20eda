"""Preemption, on-demand KV and queue timeouts through the real engine on the tiny demo-format checkpoint.

Outputs under KV pressure (requests preempted and recomputed) must equal the outputs of the same
requests run with room to spare, and every KV block must come back.
"""

import asyncio

import pytest

from flint.engine.async_engine import AsyncEngine
from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.types import Failed, Final, GenerateRequest, SamplingParams
from flint.errors import ResourceExhausted

CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"
BLOCK_BYTES = 8 * 512           # block_size 8 x the tiny checkpoint's 512 bytes of KV per token
HOG_TOKENS = 64


@pytest.fixture
def make_engine(demo_checkpoint):
    engines = []

    def make(**overrides) -> Engine:
        values = dict(model=str(demo_checkpoint), kv_cache_bytes=16 << 20, block_size=8, speculation="off")
        values.update(overrides)
        engines.append(Engine.from_config(EngineConfig.from_dict(values)))
        return engines[-1]

    yield make
    for engine in engines:
        assert engine.no_leaks(), "KV blocks leaked"


def requests():
    sampled = SamplingParams(max_tokens=80, temperature=0.8, top_p=0.95, seed=7)
    return [GenerateRequest("greedy", prefix=CODE, sampling=SamplingParams(max_tokens=80)),
            GenerateRequest("bulk", prefix=CODE * 2, bulk=True, sampling=SamplingParams(max_tokens=80)),
            GenerateRequest("sampled", prefix="import os\n" + CODE, bulk=True, sampling=sampled)]


def outputs(engine: Engine, reqs) -> dict[str, list[int]]:
    engine.recorded_outputs = {}
    for r in reqs:
        engine.add_request(r)
    events = engine.run_until_done()
    assert all(not isinstance(e, Failed) for e in events)
    assert {e.request_id for e in events if isinstance(e, Final)} == {r.request_id for r in reqs}
    return engine.recorded_outputs


def test_preempted_requests_resume_with_identical_output_and_leak_nothing(make_engine):
    roomy = outputs(make_engine(), requests())
    tight = make_engine(kv_cache_bytes=40 * BLOCK_BYTES, kv_growth_tokens=8)    # 320 tokens for ~560 needed
    assert tight.kv.num_blocks == 40
    free_at_start = tight.kv.allocator.num_free
    pressed = outputs(tight, requests())
    assert tight.metrics.preemptions._value.get() > 0
    assert pressed == roomy                     # greedy: identical tokens; sampled: same seed stream
    assert len(pressed["greedy"]) == 80
    tight.kv.radix.clear()
    assert tight.kv.allocator.num_free == free_at_start


def test_interactive_work_is_never_preempted_for_bulk(make_engine):
    engine = make_engine(kv_cache_bytes=40 * BLOCK_BYTES, kv_growth_tokens=8)
    engine.recorded_outputs = {}
    for r in requests():
        engine.add_request(r)
    preempted = set()
    while engine.has_work():
        engine.step()
        preempted |= {r.request_id for r in engine.scheduler.waiting[1] if r.num_preemptions}
        assert all(r.num_preemptions == 0 for r in engine.scheduler.waiting[0])
    assert preempted


def test_two_huge_max_tokens_requests_do_not_keep_a_keystroke_out(make_engine):
    """Issue #10: two max_tokens=100,000 requests reserved the KV and an 8-token request never started."""
    engine = make_engine(kv_cache_bytes=(1 << 30), max_context_tokens=120_000)
    for i in range(2):
        engine.add_request(GenerateRequest(f"huge{i}", prefix=CODE, bulk=True,
                                           sampling=SamplingParams(max_tokens=100_000)))
    engine.step()
    engine.add_request(GenerateRequest("key", prefix="x = 1", sampling=SamplingParams(max_tokens=1)))
    finals = []
    for _ in range(3):
        finals += [e.request_id for e in engine.step() if isinstance(e, Final)]
    assert finals == ["key"]
    for i in range(2):
        engine.abort(f"huge{i}")
    engine.run_until_done()


def test_a_request_that_cannot_start_in_time_fails_with_resource_exhausted_and_a_retry_delay(make_engine):
    engine = make_engine(kv_cache_bytes=24 * BLOCK_BYTES, queue_timeout_interactive_ms=1)
    engine.add_request(GenerateRequest("hog", prefix=CODE * 2, sampling=SamplingParams(max_tokens=20)))
    engine.step()
    engine.add_request(GenerateRequest("late", prefix=CODE * 2, sampling=SamplingParams(max_tokens=20)))
    events = engine.run_until_done()
    failed = [e for e in events if isinstance(e, Failed)]
    assert [e.request_id for e in failed] == ["late"]
    assert isinstance(failed[0].error, ResourceExhausted) and failed[0].error.retry_after_ms > 0
    assert "could not start within" in failed[0].error.message
    assert any(isinstance(e, Final) and e.request_id == "hog" for e in events)


def test_async_engine_raises_resource_exhausted_on_the_stream(make_engine):
    engine = AsyncEngine(make_engine(kv_cache_bytes=24 * BLOCK_BYTES, queue_timeout_interactive_ms=1))

    async def main():
        await engine.start()
        try:
            async def consume(req):
                return [e async for e in engine.generate(req)]
            # the hog holds the KV until it ends: long enough (its prompt and output fill the 24 blocks) that it is
            # still running when "late" arrives on a fast CPU (40 tokens once ended first in the clean-clone CI)
            hog = asyncio.create_task(consume(GenerateRequest("hog", prefix=CODE * 2,
                                                              sampling=SamplingParams(max_tokens=HOG_TOKENS))))
            while not engine.engine.scheduler.running and not hog.done():   # (a refused hog: raised below)
                await asyncio.sleep(0.001)
            if hog.done():
                await hog
            with pytest.raises(ResourceExhausted) as err:
                await consume(GenerateRequest("late", prefix=CODE * 2, sampling=SamplingParams(max_tokens=20)))
            assert err.value.retry_after_ms > 0
            events = await hog
            assert isinstance(events[-1], Final) and events[-1].completion_tokens == HOG_TOKENS
        finally:
            await engine.stop()

    asyncio.run(main())
