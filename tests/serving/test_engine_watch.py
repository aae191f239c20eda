"""The engine call's stall watch (flint.frontend.liveness.EngineWatch) on its own, with short stalls.

The watch is a timer: a call that keeps talking is never probed; a silent one is probed once per stall,
kept while the probe answers (a long prefill), and cancelled with a reason when it does not. The frozen
replica end to end is tests/reliability/test_frozen_replica.py.
"""

import asyncio

from flint.frontend.liveness import EngineWatch, LivenessConfig

STALL = LivenessConfig(engine_stall_s=0.05, engine_probe_timeout_s=0.05)


class Prober:
    def __init__(self, answers: bool):
        self.answers = answers
        self.calls = 0

    async def __call__(self, timeout_s: float) -> None:
        self.calls += 1
        if not self.answers:
            await asyncio.sleep(timeout_s * 10)   # a frozen replica: no answer in time


async def test_a_call_that_keeps_talking_is_never_probed():
    call, probe = asyncio.get_running_loop().create_future(), Prober(answers=True)
    watch = EngineWatch(STALL, probe, "here")
    watch.start(call)
    for _ in range(10):
        await asyncio.sleep(0.02)
        watch.heard()
    await watch.stop()
    assert probe.calls == 0 and not call.cancelled() and watch.failure is None


async def test_a_silent_call_whose_replica_answers_is_kept_and_probed_again_each_stall():
    call, probe = asyncio.get_running_loop().create_future(), Prober(answers=True)
    watch = EngineWatch(STALL, probe, "here")
    watch.start(call)
    async with asyncio.timeout(10):
        while probe.calls < 3:
            await asyncio.sleep(0.01)
    await watch.stop()
    assert not call.cancelled() and watch.failure is None and watch.probes == probe.calls


async def test_a_silent_call_whose_replica_does_not_answer_is_cancelled_with_the_reason():
    call, probe = asyncio.get_running_loop().create_future(), Prober(answers=False)
    watch = EngineWatch(STALL, probe, "here")
    watch.start(call)
    async with asyncio.timeout(10):
        while not call.cancelled():
            await asyncio.sleep(0.01)
    assert "did not answer a probe within 0.05 s" in watch.failure
    await watch.stop()
    assert probe.calls == 1
