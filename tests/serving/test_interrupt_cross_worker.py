"""An Interrupt sent to worker B stops a stream owned by worker A; no delta after the acknowledgement."""

import grpc
import pytest
from support.services import long_edit

from flint.v1 import flint_pb2 as pb

LONG_TOKENS = 900


async def start_long_stream(stub, request_id: str):
    """A long Edit call on worker A, read up to its first delta."""
    call = stub.Edit(long_edit(request_id, LONG_TOKENS))
    messages = [await call.read(), await call.read()]
    assert [m.WhichOneof("kind") for m in messages] == ["accepted", "delta"]
    return call, messages


async def rest_of(call, messages):
    while (message := await call.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


async def test_interrupt_from_second_worker_stops_stream_of_first(flint_stubs):
    worker_a, worker_b = flint_stubs
    call, messages = await start_long_stream(worker_a, "xworker-1")
    ack = await worker_b.Interrupt(pb.InterruptRequest(request_id="xworker-1"))
    await rest_of(call, messages)

    assert ack.was_running and ack.last_seq >= 1
    seqs = [m.delta.seq for m in messages if m.WhichOneof("kind") == "delta"]
    assert max(seqs) == ack.last_seq, "no delta after the acknowledged last seq"
    final = messages[-1].final
    assert final.finish_reason == pb.FINISH_REASON_INTERRUPTED and final.seq == ack.last_seq + 1
    assert final.completion_tokens < LONG_TOKENS


async def test_interrupt_after_the_end_reports_not_running(flint_stubs):
    worker_a, worker_b = flint_stubs
    done = [m async for m in worker_a.Complete(pb.CompleteRequest(request_id="xworker-done", prefix="x",
                                                                  sampling=pb.Sampling(max_tokens=2)))]
    ack = await worker_b.Interrupt(pb.InterruptRequest(request_id="xworker-done"))
    assert not ack.was_running and ack.last_seq == done[-1].final.seq - 1


async def test_interrupt_of_unknown_request_is_not_found(flint_stubs):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await flint_stubs[1].Interrupt(pb.InterruptRequest(request_id="never-sent"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "never-sent" in info.value.details()
