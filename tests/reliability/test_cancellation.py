"""A client cancel at any moment frees the engine and leaves no running request record.

Each point is reached deterministically: a gate wraps one step of the
worker's start path (routing, admission, the claim's Redis round trip) and
holds it until the test has cancelled the call. The replica runs the real
engine (rel_support.py) and records every request's output tokens.
"""

import asyncio
import contextlib

import grpc

from rel_support import engine_freed_everything, eventually
from flint.frontend.owner import to_completion
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

MAX_TOKENS = 8000  # seconds of decoding: a request that is not stopped is still running when checked


class Gate:
    """Holds a wrapped coroutine function at one point until `release()`; tells the test when it got there."""

    def __init__(self, fn, *, after=False, unaware=False):
        self.fn = fn
        self.after = after        # hold after `fn` ran (its result is in Redis, not yet seen by the caller)
        self.unaware = unaware    # the holder does not see the cancel (as a handler that starts after it)
        self.entered = asyncio.Event()
        self.released = asyncio.Event()
        self.passed = False       # the caller went on past the gate

    async def __call__(self, *args, **kwargs):
        result = await self.fn(*args, **kwargs) if self.after else None
        self.entered.set()
        if self.unaware:
            await to_completion(self.released.wait())
        else:
            await self.released.wait()
        self.passed = True
        return result if self.after else await self.fn(*args, **kwargs)

    def release(self) -> None:
        self.released.set()


async def cancel_at(gate: Gate, stub, request_id: str) -> None:
    call = stub.Complete(pb.CompleteRequest(request_id=request_id, prefix="p",
                                            sampling=pb.Sampling(max_tokens=MAX_TOKENS)))
    reading = asyncio.ensure_future(call.read())
    await asyncio.wait_for(gate.entered.wait(), 30)
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
        await reading
    gate.release()


async def nothing_left(worker, engine, request_id: str) -> None:
    """No running record for the request, and the engine ran nothing (or stopped it at once)."""
    async def not_running():
        record = await worker.servicer.store.get_request(request_id)
        return record is None or not record.running

    await eventually(not_running)
    await eventually(lambda: engine_freed_everything(engine), 30)  # the engine's step thread on a busy machine
    await eventually(lambda: request_id not in worker.servicer.local)
    ran = [k for k in engine.engine.recorded_outputs if k.startswith(request_id)]
    assert all(len(engine.engine.recorded_outputs[k]) < MAX_TOKENS for k in ran), "the engine was stopped"


async def setup(cluster, name):
    _, engine = await cluster.add_replica()
    engine.engine.recorded_outputs = {}  # request id -> output token ids of its last run that ended
    worker = await cluster.add_worker(name)
    channel = grpc.aio.insecure_channel(worker.address)
    return engine, worker, channel, flint_pb2_grpc.FlintStub(channel)


async def test_cancel_during_routing_leaves_nothing_running(cluster):
    engine, worker, channel, stub = await setup(cluster, "route")
    async with channel:
        gate = worker.servicer.pool.pick = Gate(worker.servicer.pool.pick)
        await cancel_at(gate, stub, "c-route")
        await nothing_left(worker, engine, "c-route")


async def test_cancel_during_admission_leaves_nothing_running(cluster):
    engine, worker, channel, stub = await setup(cluster, "admit")
    async with channel:
        gate = worker.servicer.guard.admit = Gate(worker.servicer.guard.admit)
        await cancel_at(gate, stub, "c-admit")
        await nothing_left(worker, engine, "c-admit")


async def test_cancel_while_the_claim_is_in_flight_leaves_no_running_record(cluster):
    """The claim ran in Redis, but the handler was cancelled before it saw the answer."""
    engine, worker, channel, stub = await setup(cluster, "claim")
    async with channel:
        gate = worker.servicer.store.claim_request = Gate(worker.servicer.store.claim_request, after=True)
        await cancel_at(gate, stub, "c-claim")
        await nothing_left(worker, engine, "c-claim")
        assert (await worker.servicer.store.get_request("c-claim")).state == "interrupted"


async def test_cancel_before_the_handler_starts_still_stops_the_engine(cluster):
    """The cancel lands before the handler runs, which then starts the request without seeing it: the call's
    end still cancels the request's owner and with it the engine work."""
    engine, worker, channel, stub = await setup(cluster, "early")
    async with channel:
        gate = worker.servicer.pool.pick = Gate(worker.servicer.pool.pick, unaware=True)
        await cancel_at(gate, stub, "c-early")
        await nothing_left(worker, engine, "c-early")
        assert gate.passed, "the handler went on to start the request"


async def test_cancel_mid_stream_stops_the_engine(cluster):
    engine, worker, channel, stub = await setup(cluster, "mid")
    async with channel:
        call = stub.Complete(pb.CompleteRequest(request_id="c-mid", prefix="p",
                                                sampling=pb.Sampling(max_tokens=MAX_TOKENS)))
        assert (await call.read()).WhichOneof("kind") == "accepted"
        assert (await call.read()).WhichOneof("kind") == "delta"
        call.cancel()
        await nothing_left(worker, engine, "c-mid")
        assert "c-mid" in engine.engine.recorded_outputs
