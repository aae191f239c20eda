"""Resume: a client that lost its stream reattaches on any worker and gets every missing delta exactly once.

Replicas run the real engine (rel_support.py); "exactly once" is checked
against the same request run uninterrupted (`reference`).
"""

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis

from rel_support import aborts, eventually
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc


def stub_for(address: str):
    channel = grpc.aio.insecure_channel(address)
    return channel, flint_pb2_grpc.FlintStub(channel)


async def read_until_seq(call, seq: int) -> list:
    messages = []
    while True:
        message = await call.read()
        assert message is not grpc.aio.EOF, messages
        messages.append(message)
        if message.WhichOneof("kind") == "delta" and message.delta.seq >= seq:
            return messages


def deltas(messages):
    return [m.delta for m in messages if m.WhichOneof("kind") == "delta"]


def check_exactly_once(first, rest, expected: str, max_tokens: int):
    seqs = [d.seq for d in deltas(first) + deltas(rest)]
    assert seqs == list(range(1, len(seqs) + 1)), "every seq once, in order, no gaps"
    text = "".join(d.text for d in deltas(first) + deltas(rest))
    assert text == expected
    final = rest[-1].final
    assert rest[-1].WhichOneof("kind") == "final" and final.seq == len(seqs) + 1
    assert final.completion_tokens == max_tokens


async def test_resume_on_other_worker_while_owner_still_streams(cluster, reference):
    expected = await reference.atext("def f():", 800)
    _, engine = await cluster.add_replica("r1")
    a = await cluster.add_worker("wa")
    b = await cluster.add_worker("wb")
    ch_a, stub_a = stub_for(a.address)
    ch_b, stub_b = stub_for(b.address)
    try:
        call = stub_a.Complete(pb.CompleteRequest(request_id="live-1", prefix="def f():",
                                                  sampling=pb.Sampling(max_tokens=800)))
        first = await read_until_seq(call, 5)
        assert engine.load().running == 1, "the owner is still streaming when the resume starts"
        # A second reader on worker B follows the same request from seq 5 while A keeps streaming.
        rest = [m async for m in stub_b.Resume(pb.ResumeRequest(request_id="live-1", last_seq=5))]
        check_exactly_once(first, rest, expected, 800)
        call.cancel()
    finally:
        await ch_a.close()
        await ch_b.close()


async def test_resume_after_client_disconnect_regenerates_the_rest_exactly_once(cluster, reference):
    expected = await reference.atext("class A:", 1000)
    _, engine = await cluster.add_replica("r1")
    engine.engine.recorded_outputs = {}  # request id -> output token ids of its last run that ended
    a = await cluster.add_worker("wa")
    b = await cluster.add_worker("wb")
    ch_a, stub_a = stub_for(a.address)
    ch_b, stub_b = stub_for(b.address)
    try:
        call = stub_a.Complete(pb.CompleteRequest(request_id="gone-1", prefix="class A:",
                                                  sampling=pb.Sampling(max_tokens=1000)))
        first = await read_until_seq(call, 7)
        call.cancel()  # the client vanishes: worker A cancels the engine work
        await eventually(lambda: aborts(engine) == 1 and engine.load().running == 0)
        cut_short = len(engine.engine.recorded_outputs["gone-1"])
        assert cut_short < 1000, "the engine stopped the request when its client went away"
        rest = [m async for m in stub_b.Resume(pb.ResumeRequest(request_id="gone-1", last_seq=7))]
        check_exactly_once(first, rest, expected, 1000)
        # The takeover runs under its own engine-side id (the first run may still be on the engine).
        [rerun] = [k for k in engine.engine.recorded_outputs if k.startswith("gone-1#takeover-")]
        assert len(engine.engine.recorded_outputs[rerun]) == 1000, "worker B ran the request again to the end"
    finally:
        await ch_a.close()
        await ch_b.close()


async def test_owner_killed_while_its_journal_lags_the_client_resumes_exactly_once(cluster, reference, valkey_url):
    """The journal follows delivery in batches, so a worker that dies can leave its client ahead of the
    journal. Redis writes are held (CLIENT PAUSE WRITE) while the client reads on, then the owning worker
    process is SIGKILLed: the resume regenerates the request, numbers its deltas as the dead owner did and
    sends only what the client lacks."""
    expected = await reference.atext("def lag():", 1000)
    await cluster.add_replica("r1")
    doomed = await cluster.add_worker_process("w-lag")
    survivor = await cluster.add_worker("w-take")
    admin = aioredis.Redis.from_url(valkey_url)
    ch_a, stub_a = stub_for(doomed)
    ch_b, stub_b = stub_for(survivor.address)
    key = f"{cluster.key_prefix}:journal:lag-1"
    try:
        call = stub_a.Complete(pb.CompleteRequest(request_id="lag-1", prefix="def lag():",
                                                  sampling=pb.Sampling(max_tokens=1000)))
        first = await read_until_seq(call, 3)
        await admin.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
        # No journal write lands from here on; the journal may be ahead of what the client has read so far
        # (the owner delivers into gRPC's buffers before the client reads), so the client reads past it.
        held = max((int(fields[b"s"]) for _, fields in await admin.xrange(key)), default=0)
        first += await read_until_seq(call, max(deltas(first)[-1].seq, held) + 10)
        cluster.kill_process("w-lag")  # SIGKILL while its journal writes are held
        journal_seq = max((int(fields[b"s"]) for _, fields in await admin.xrange(key)), default=0)
        client_seq = deltas(first)[-1].seq
        assert client_seq > journal_seq, "the client holds deltas the journal never got"
        await admin.execute_command("CLIENT", "UNPAUSE")
        rest = [m async for m in stub_b.Resume(pb.ResumeRequest(request_id="lag-1", last_seq=client_seq))]
        check_exactly_once(first, rest, expected, 1000)
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()
        await ch_a.close()
        await ch_b.close()


async def test_resume_of_finished_request_replays_the_journal(cluster):
    await cluster.add_replica("r1")
    a = await cluster.add_worker("wa")
    ch_a, stub_a = stub_for(a.address)
    try:
        done = [m async for m in stub_a.Complete(pb.CompleteRequest(request_id="done-1", prefix="x",
                                                                    sampling=pb.Sampling(max_tokens=8)))]
        again = [m async for m in stub_a.Resume(pb.ResumeRequest(request_id="done-1", last_seq=0))]
        assert [m.SerializeToString() for m in again] == [m.SerializeToString() for m in done]
        last = done[-1].final.seq - 1
        tail = [m async for m in stub_a.Resume(pb.ResumeRequest(request_id="done-1", last_seq=last - 2))]
        assert [d.seq for d in deltas(tail)] == [last - 1, last] and tail[-1].final.seq == last + 1
    finally:
        await ch_a.close()


async def test_resume_of_unknown_request_is_not_found(cluster):
    await cluster.add_replica("r1")
    a = await cluster.add_worker("wa")
    ch, stub = stub_for(a.address)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [m async for m in stub.Resume(pb.ResumeRequest(request_id="never-was", last_seq=0))]
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as info:
            [m async for m in stub.Resume(pb.ResumeRequest(request_id="bad id!", last_seq=0))]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await ch.close()


async def test_journal_is_bounded_and_expires(cluster, valkey_url):
    await cluster.add_replica("r1")
    a = await cluster.add_worker("wa", journal={"max_deltas": 16, "ttl_s": 30.0})
    ch, stub = stub_for(a.address)
    redis = aioredis.Redis.from_url(valkey_url)
    try:
        sent = [m async for m in stub.Complete(pb.CompleteRequest(request_id="long-1", prefix="y",
                                                                  sampling=pb.Sampling(max_tokens=200)))]
        last = max(d.seq for d in deltas(sent))  # deltas that came while a journal write was in flight merge
        assert last > 18
        key = f"{cluster.key_prefix}:journal:long-1"
        assert await redis.xlen(key) == 16
        assert 0 < await redis.pttl(key) <= 30_000
        assert 0 < await redis.pttl(key + ":meta") <= 30_000
        with pytest.raises(grpc.aio.AioRpcError) as info:  # seq 1.. were trimmed away
            [m async for m in stub.Resume(pb.ResumeRequest(request_id="long-1", last_seq=2))]
        assert info.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in info.value.details()
        tail = [m async for m in stub.Resume(pb.ResumeRequest(request_id="long-1", last_seq=last - 2))]
        assert [d.seq for d in deltas(tail)] == [last - 1, last]
    finally:
        await redis.aclose()
        await ch.close()


async def test_session_stream_resume_interleaves_with_other_requests(cluster):
    await cluster.add_replica("r1")
    a = await cluster.add_worker("wa")
    ch, stub = stub_for(a.address)
    try:
        done = [m async for m in stub.Complete(pb.CompleteRequest(request_id="sess-1", prefix="z",
                                                                  sampling=pb.Sampling(max_tokens=40)))]
        last = done[-1].final.seq - 1
        assert last >= 2  # deltas behind a journal write merge, so the count varies; at least two here
        queue: asyncio.Queue = asyncio.Queue()
        for msg in (pb.ClientMessage(open=pb.Open()),
                    pb.ClientMessage(resume=pb.ResumeRequest(request_id="sess-1", last_seq=1))):
            queue.put_nowait(msg)
        queue.put_nowait(None)

        async def requests():
            while (item := await queue.get()) is not None:
                yield item

        out = [m async for m in stub.Session(requests())]
        assert out[0].WhichOneof("kind") == "opened"
        assert [d.seq for d in deltas(out)] == list(range(2, last + 1))
        assert out[-1].final.SerializeToString() == done[-1].final.SerializeToString()
    finally:
        await ch.close()
