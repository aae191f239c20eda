"""AsyncEngine: the serving contract (stream shape, errors on first iteration, cancel frees KV)."""

import asyncio

import pytest

from flint.engine.async_engine import AsyncEngine
from flint.engine.config import EngineConfig
from flint.engine.types import Delta, Final, FinishReason, GenerateRequest, SamplingParams, Started
from flint.errors import InvalidArgument

PREFIX = "def add(a, b):\n"


@pytest.fixture
async def engine(demo_checkpoint):
    eng = await asyncio.to_thread(
        AsyncEngine.from_config, EngineConfig(model=str(demo_checkpoint), kv_cache_bytes=8 << 20, num_threads=1))
    await eng.start()
    yield eng
    await eng.stop()
    assert eng.engine.no_leaks()


async def test_generate_streams_started_deltas_final(engine):
    events = [e async for e in engine.generate(GenerateRequest(
        "a", prefix=PREFIX, sampling=SamplingParams(max_tokens=8, temperature=1.0, seed=1)))]
    assert isinstance(events[0], Started) and events[0].prompt_tokens > 0
    assert isinstance(events[-1], Final) and events[-1].completion_tokens == 8
    assert all(isinstance(e, Delta) for e in events[1:-1])
    assert [e.seq for e in events[1:]] == list(range(1, len(events)))
    assert engine.model_name and engine.max_context_tokens == 4096


async def test_invalid_request_raises_on_first_iteration(engine):
    stream = engine.generate(GenerateRequest("b", prefix="x " * 5000))
    with pytest.raises(InvalidArgument, match="context limit"):
        await stream.__anext__()


async def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    for _ in range(int(timeout_s / 0.01)):
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_closing_the_stream_aborts_and_frees_kv(engine):
    stream = engine.generate(GenerateRequest("c", prefix=PREFIX, sampling=SamplingParams(max_tokens=2000)))
    assert isinstance(await stream.__anext__(), Started)
    assert await wait_for(lambda: engine.load().running == 1)
    await stream.aclose()
    assert await wait_for(lambda: engine.load().running == 0)
    assert engine.metrics.aborts._value.get() == 1 and engine.load().waiting == 0


async def test_abort_by_id_ends_the_stream_with_interrupted(engine):
    stream = engine.generate(GenerateRequest("d", prefix=PREFIX, sampling=SamplingParams(max_tokens=2000)))
    assert isinstance(await stream.__anext__(), Started)
    assert await engine.abort("d")
    events = [e async for e in stream]
    assert events[-1].finish_reason is FinishReason.INTERRUPTED
    assert not await engine.abort("d")


async def test_stop_ends_open_streams_with_unavailable(demo_checkpoint):
    from flint.errors import Unavailable

    eng = await asyncio.to_thread(
        AsyncEngine.from_config, EngineConfig(model=str(demo_checkpoint), kv_cache_bytes=8 << 20, num_threads=1))
    await eng.start()
    stream = eng.generate(GenerateRequest("s", prefix=PREFIX, sampling=SamplingParams(max_tokens=4000)))
    assert isinstance(await stream.__anext__(), Started)
    await eng.stop()
    with pytest.raises(Unavailable, match="stopped"):
        async for _ in stream:
            pass


async def test_a_reader_that_falls_behind_gets_what_was_queued_in_one_batch(engine):
    request = GenerateRequest("behind", prefix=PREFIX, sampling=SamplingParams(max_tokens=12, temperature=1.0,
                                                                                seed=3))
    expected = [e async for e in engine.generate(request)]
    batches = engine.generate_batches(GenerateRequest("behind-2", prefix=PREFIX, sampling=request.sampling))
    assert [type(e) for e in await batches.__anext__()] == [Started]
    assert await wait_for(lambda: engine.load().running == engine.load().waiting == 0)   # done, unread
    [rest] = [batch async for batch in batches]
    assert [type(e) for e in rest] == [type(e) for e in expected[1:]] and isinstance(rest[-1], Final)
    assert "".join(e.text for e in rest if isinstance(e, Delta)) == "".join(
        e.text for e in expected if isinstance(e, Delta))
