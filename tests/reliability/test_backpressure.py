"""Backpressure: real gRPC clients that read slowly or never, against the real engine.

A client that reads slower than the model writes gets merged deltas (seqs still 1, 2, 3, ..., text
and token counts exact); one that never reads has its output held up to the stream's cap, then its
request ends with RESOURCE_EXHAUSTED and the engine lets it go, so a worker's memory stays bounded.
"""

import asyncio

import grpc

from rel_support import eventually, open_session
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

STREAM_CAP = 4096
WORKER_CAP = 3 * STREAM_CAP
# A client that announces a small HTTP/2 window, so the server's writes wait for it after a few KB (a
# default window of 64 KB or more would hold a whole run of the tiny test model).
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]


def check_stream(messages, want_text: str) -> list[pb.Delta]:
    deltas = [m.delta for m in messages if m.WhichOneof("kind") == "delta"]
    assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
    text = "".join(d.text for d in deltas)
    assert want_text.startswith(text) or text.startswith(want_text)
    return deltas


async def test_a_slow_reader_gets_merged_deltas_with_exact_text_seqs_and_token_counts(cluster, reference):
    tokens = 800
    want = await asyncio.to_thread(reference.run, "slow", tokens)
    await cluster.add_replica()
    worker = await cluster.add_worker("slow")
    async with grpc.aio.insecure_channel(worker.address, options=SMALL_WINDOW) as channel:
        call = flint_pb2_grpc.FlintStub(channel).Complete(pb.CompleteRequest(
            request_id="slow-1", prefix="slow", sampling=pb.Sampling(max_tokens=tokens)))
        messages = []
        async for message in call:
            messages.append(message)
            await asyncio.sleep(0.02)     # slower than the engine writes
    deltas = check_stream(messages, want.text)
    final = messages[-1].final
    assert "".join(d.text for d in deltas) == want.text
    assert sum(d.token_count for d in deltas) + final.withheld_tokens == final.completion_tokens == tokens
    assert len(deltas) < want.deltas, "a slow reader should have got merged deltas"
    assert worker.servicer.buffers.bytes == 0


async def test_clients_that_never_read_are_capped_then_ended_resource_exhausted_and_free_the_engine(
        cluster, reference):
    tokens, streams = 6000, 6
    want = await asyncio.to_thread(reference.run, "never", 400)   # greedy: the start of every stream's text
    _, engine = await cluster.add_replica()
    worker = await cluster.add_worker("never", buffers={"max_buffered_bytes_per_stream": STREAM_CAP,
                                                        "max_buffered_bytes_per_worker": WORKER_CAP})
    budget = worker.servicer.buffers
    async with grpc.aio.insecure_channel(worker.address, options=SMALL_WINDOW) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        calls = [stub.Complete(pb.CompleteRequest(request_id=f"never-{i}", prefix="never",
                                                  sampling=pb.Sampling(max_tokens=tokens)))
                 for i in range(streams)]
        await eventually(lambda: engine.load().running + engine.load().waiting > 0, timeout_s=30)
        # Nobody reads: the engine work ends anyway, and the held output never passed the caps.
        await eventually(lambda: budget.refused >= streams and engine.load().running == 0
                         and engine.load().waiting == 0, timeout_s=60)
        assert budget.peak_bytes <= WORKER_CAP
        await eventually(lambda: budget.bytes == 0)
        for call in calls:          # now read: what was sent, then the status
            messages = []
            try:
                async for message in call:
                    messages.append(message)
                raise AssertionError("the stream ended without an error")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "read the stream too slowly" in err.details()
            check_stream(messages, want.text)
    await eventually(lambda: all(v == 0 for v in (engine.load().running, engine.load().waiting)))


async def test_a_session_stream_that_is_never_read_ends_each_request_resource_exhausted(cluster, reference):
    """Two requests on one Session stream nobody reads: each is capped and ends with a RequestError
    RESOURCE_EXHAUSTED; the stream itself stays usable."""
    want = await asyncio.to_thread(reference.run, "sess", 400)
    _, engine = await cluster.add_replica()
    worker = await cluster.add_worker("session", buffers={"max_buffered_bytes_per_stream": STREAM_CAP,
                                                          "max_buffered_bytes_per_worker": WORKER_CAP})
    budget = worker.servicer.buffers
    async with grpc.aio.insecure_channel(worker.address, options=SMALL_WINDOW) as channel:
        call, outgoing = open_session(flint_pb2_grpc.FlintStub(channel))
        for i in range(2):
            outgoing.put_nowait(pb.ClientMessage(complete=pb.CompleteRequest(
                request_id=f"sess-{i}", prefix="sess", sampling=pb.Sampling(max_tokens=6000))))
        await eventually(lambda: budget.refused >= 2 and engine.load().running == 0 and engine.load().waiting == 0,
                         timeout_s=60)
        assert budget.peak_bytes <= STREAM_CAP
        outgoing.put_nowait(None)   # half-close: the stream ends once both requests have
        messages = [m async for m in call]
    errors = {m.error.request_id: m.error for m in messages if m.WhichOneof("kind") == "error"}
    assert set(errors) == {"sess-0", "sess-1"}
    assert all(e.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "too slowly" in e.message
               for e in errors.values())
    for rid in errors:
        check_stream([m for m in messages if m.WhichOneof("kind") == "delta" and m.delta.request_id == rid],
                     want.text)
    assert budget.bytes == 0
