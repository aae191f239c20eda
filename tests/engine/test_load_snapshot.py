"""`Engine.load()` is a snapshot the stepping thread publishes, safe to read from any thread mid-step.

Replicas read it from the event loop (admission, heartbeats, the Load RPC, metrics) while the step thread
changes the scheduler and the KV cache; it must never raise and its fields must belong to one moment.
"""

import threading

import pytest

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.types import GenerateRequest, SamplingParams


@pytest.fixture
def engine(demo_checkpoint):
    config = EngineConfig.from_dict(dict(model=str(demo_checkpoint), kv_cache_bytes=16 << 20, block_size=8,
                                         max_batch_size=4, num_threads=1))
    return Engine.from_config(config)


def request(i: int, n: int) -> GenerateRequest:
    return GenerateRequest(f"r{i}", prefix=f"def f{i}(x):\n    return x * {i}\n" * (1 + i % 3),
                           sampling=SamplingParams(max_tokens=n, temperature=1.0, seed=i))


def test_load_read_during_running_steps_never_raises_and_is_consistent(engine):
    stop, errors, seen = threading.Event(), [], []

    def read() -> None:
        while not stop.is_set():
            try:
                load = engine.load()
            except Exception as exc:  # noqa: BLE001 - the test reports it
                errors.append(repr(exc))
                return
            seen.append(load)
            if not 0 <= load.running <= 4 or load.waiting < 0 or not 0.0 <= load.kv_used_fraction <= 1.0:
                errors.append(f"out of range: {load}")
            if (load.running == 0) != (load.kv_used_fraction == 0.0):   # a running request holds blocks
                errors.append(f"running and KV use from different moments: {load}")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        for i in range(60):                      # requests come and go, some aborted mid-decode
            engine.add_request(request(i, n=4 + i % 7))
            for _ in range(3):
                engine.step()
            if i % 4 == 0:
                engine.abort(f"r{i}")
        engine.run_until_done()
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert errors == []
    assert any(load.running for load in seen), "the readers saw requests running"
    assert engine.load().running == 0 and engine.load().kv_used_fraction == 0.0
    assert engine.no_leaks()


def test_load_is_the_published_snapshot_plus_requests_added_since(engine):
    idle = engine.load()
    assert engine.load() is idle, "between steps every reader gets the same published object"
    engine.add_request(request(1, n=8))
    assert engine.load().waiting == 1 and engine.load().running == 0   # added, not yet stepped
    engine.step()
    after = engine.load()
    assert after.running == 1 and after.waiting == 0 and after.kv_used_fraction > 0
    engine.scheduler.running.clear()     # state the step thread owns: load() does not read it
    assert engine.load() is after
    engine.scheduler.running.append(engine._requests["r1"])
    engine.run_until_done()
    assert engine.load().running == 0
