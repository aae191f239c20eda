"""The same interrupt delivered twice at once still ends the client's stream with one interrupted Final.

An owner worker hears each cross-worker interrupt twice (the pub/sub message
and the flag-key poll), and a client that goes away cancels its relay while
an interrupt may be stopping it. Here the owner is an in-process front-end
worker (real gRPC, real Valkey, real journal) relaying from the real engine
replica, so the test can hand the owner's interrupt entry point a second call
a few event-loop steps after the first, when the relay is in the middle of
journaling its interrupted Final or recording the end of the request, or
(the largest counts, when Redis answers fast) after the end. The step
counts sweep those landing points.
"""

import asyncio

import grpc
import pytest
from support.services import long_edit

from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

LONG_TOKENS = 900
STEPS = (0, 1, 2, 3, 4, 6, 8, 12)  # event-loop steps between the first call and the second


@pytest.fixture
async def owner(valkey_url, engine_replica):
    """An in-process front-end worker (the owner) and a stub connected to it."""
    from flint.config import FrontendConfig
    from flint.frontend.server import FrontendWorker

    worker = FrontendWorker(FrontendConfig(redis_url=valkey_url, worker_id="worker-twice", port=0,
                                           reuse_port=False, grace_period_s=1.0))
    await worker.start()
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            yield worker, flint_pb2_grpc.FlintStub(channel)
    finally:
        await worker.stop(0.5)


async def started_stream(stub, request_id: str):
    call = stub.Edit(long_edit(request_id, LONG_TOKENS))
    messages = [await call.read(), await call.read()]
    assert [m.WhichOneof("kind") for m in messages] == ["accepted", "delta"]
    return call, messages


async def rest_of(call, messages, timeout_s: float = 20.0):
    """Read to EOF; a stream that never ends fails the test instead of hanging it."""
    async def read_all():
        while (message := await call.read()) is not grpc.aio.EOF:
            messages.append(message)

    try:
        await asyncio.wait_for(read_all(), timeout_s)
    except asyncio.TimeoutError:
        call.cancel()
        kinds = [m.WhichOneof("kind") for m in messages[-3:]]
        pytest.fail(f"stream did not end within {timeout_s:g} s after the interrupt (last messages: {kinds})")
    return messages


async def steps(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def assert_interrupted_at(messages, result) -> None:
    assert result.was_running
    seqs = [m.delta.seq for m in messages if m.WhichOneof("kind") == "delta"]
    assert max(seqs) == result.last_seq, "no delta after the acknowledged last seq"
    finals = [m.final for m in messages if m.WhichOneof("kind") == "final"]
    assert len(finals) == 1 and messages[-1].WhichOneof("kind") == "final", "exactly one Final, last"
    assert finals[0].finish_reason == pb.FINISH_REASON_INTERRUPTED and finals[0].seq == result.last_seq + 1


@pytest.mark.parametrize("gap", STEPS)
async def test_interrupt_delivered_twice_ends_stream_with_one_interrupted_final(owner, gap):
    worker, stub = owner
    request_id = f"twice-{gap}"
    call, messages = await started_stream(stub, request_id)
    bus = worker._bus  # the owner's interrupt entry point: both the pub/sub and the flag-poll paths call it

    async def second_interrupt():
        owned = bus._local.get(request_id) is not None   # same step as the bus's own look-up
        return owned, await bus.interrupt(request_id)

    first = asyncio.ensure_future(bus.interrupt(request_id))
    await steps(gap)
    second = asyncio.ensure_future(second_interrupt())
    result, (owned, again) = await asyncio.gather(first, second)
    await rest_of(call, messages)

    if owned:
        assert again == result, "both callers get the same outcome"
    else:  # the first stop was already over (the owner left): the registry's answer, the same last seq
        assert not again.was_running and again.last_seq == result.last_seq
    assert_interrupted_at(messages, result)


@pytest.mark.parametrize("gap", [gap for gap in STEPS if gap > 0])  # the interrupt has begun first
async def test_client_cancel_racing_an_interrupt_still_records_the_end(owner, gap):
    worker, stub = owner
    request_id = f"twice-cancel-{gap}"
    call, messages = await started_stream(stub, request_id)
    relay = worker._bus._local.get(request_id)
    interrupting = asyncio.ensure_future(relay.interrupt())
    await steps(gap)
    await relay.cancel()  # what the servicer does when the client goes away
    result = await interrupting
    await rest_of(call, messages)

    assert_interrupted_at(messages, result)
    record = await worker._bus._store.get_request(request_id)
    assert record.state == "interrupted" and record.last_seq == result.last_seq, record
