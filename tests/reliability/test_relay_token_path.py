"""The front-end token path: interrupts that arrive twice; deltas that do not wait for Redis.

The replica runs the real engine (rel_support.py), decoding as fast as this
machine allows.
"""

import asyncio

import grpc
import pytest

from rel_support import eventually
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc


async def test_an_interrupt_arriving_twice_still_ends_the_stream_with_one_final(cluster):
    """Pub/sub and the flag poll often both deliver one interrupt; the second must not swallow the Final."""
    _, engine = await cluster.add_replica()
    worker = await cluster.add_worker("twice")
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        # The second interrupt lands 0..8 loop turns after the first: across the window in which the
        # relay journals its interrupted Final (a Redis round trip).
        for delay in (0, 1, 2, 3, 5, 8):
            rid = f"twice-{delay}"
            call = stub.Complete(pb.CompleteRequest(request_id=rid, prefix="p", sampling=pb.Sampling(max_tokens=8000)))
            messages = [await call.read(), await call.read()]
            relay = worker._bus._local.get(rid)
            first = asyncio.create_task(relay.interrupt())
            for _ in range(delay):
                await asyncio.sleep(0)
            second = await relay.interrupt()
            ack = await first
            while (m := await asyncio.wait_for(call.read(), 10)) is not grpc.aio.EOF:
                messages.append(m)
            finals = [m.final for m in messages if m.WhichOneof("kind") == "final"]
            assert len(finals) == 1 and finals[0].finish_reason == pb.FINISH_REASON_INTERRUPTED, delay
            assert ack.was_running and second.last_seq == ack.last_seq == finals[0].seq - 1
            await eventually(lambda: engine.load().running == 0)  # the engine let the request go


async def test_deltas_keep_flowing_while_redis_holds_journal_writes_and_a_resume_replays_them_exactly(
        cluster, reference, valkey_url):
    """Redis is off the per-delta path: while every Redis write is held (CLIENT PAUSE ... WRITE), the client
    keeps getting deltas (seqs 1, 2, 3, ..., text and token counts exact; one per engine delta while it keeps
    up, merged when it lags, as backpressure allows); the journal catches up in batches, so a resume afterwards
    replays what the client saw, seq for seq."""
    import redis.asyncio as aioredis

    tokens = 600
    want = await asyncio.to_thread(reference.run, "q", tokens)
    await cluster.add_replica()
    # The pause is well inside the journal's write timeout: this test is about catching up. A stall past the
    # timeout leaves a gap instead (test_request_owner); at the default 500 ms, a 500 ms pause sat on that edge
    # and a loaded CI run crossed it.
    worker = await cluster.add_worker("flow", journal={"write_timeout_ms": 5000.0})
    admin = aioredis.Redis.from_url(valkey_url)
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = flint_pb2_grpc.FlintStub(channel)
            call = stub.Complete(pb.CompleteRequest(request_id="flow-1", prefix="q",
                                                    sampling=pb.Sampling(max_tokens=tokens)))
            messages = [await call.read(), await call.read()]
            assert [m.WhichOneof("kind") for m in messages] == ["accepted", "delta"]
            await admin.execute_command("CLIENT", "PAUSE", 500, "WRITE")
            journaled = await admin.xlen(f"{cluster.key_prefix}:journal:flow-1")  # frozen until the pause ends
            loop = asyncio.get_running_loop()
            pause_ends = loop.time() + 0.3
            while loop.time() < pause_ends and (m := await asyncio.wait_for(call.read(), 30)) is not grpc.aio.EOF:
                messages.append(m)
            assert len(messages) > journaled + 1, "the client got deltas the journal did not have yet"
            while messages[-1].WhichOneof("kind") != "final":
                messages.append(await asyncio.wait_for(call.read(), 30))
            deltas = [m.delta for m in messages if m.WhichOneof("kind") == "delta"]
            final = messages[-1].final
            assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
            assert "".join(d.text for d in deltas) == want.text
            assert sum(d.token_count for d in deltas) == tokens == final.completion_tokens
            assert final.seq == len(deltas) + 1
            assert len(deltas) <= want.deltas, "a client delta carries one or more whole engine deltas"
            tail = [m async for m in stub.Resume(pb.ResumeRequest(request_id="flow-1", last_seq=1))]
            assert [m.delta for m in tail if m.WhichOneof("kind") == "delta"] == deltas[1:]
            assert tail[-1].final.seq == final.seq
    finally:
        await admin.execute_command("CLIENT", "UNPAUSE")
        await admin.aclose()


async def test_a_worker_process_serves_on_uvloop_by_default_and_on_asyncio_when_asked(cluster, reference, monkeypatch):
    """`python -m flint.frontend.worker` runs on uvloop (cheaper per request) unless FLINT_EVENT_LOOP=asyncio;
    either way it serves the same text. A loop it does not know is refused by name."""
    import json
    from dataclasses import asdict

    expected = await reference.atext("def g():", 12)
    await cluster.add_replica("r1")
    for asked, runs in ((None, "uvloop"), ("asyncio", "asyncio")):
        if asked is None:
            monkeypatch.delenv("FLINT_EVENT_LOOP", raising=False)
        else:
            monkeypatch.setenv("FLINT_EVENT_LOOP", asked)
        config = json.dumps(asdict(cluster.frontend_config(f"loop-{runs}")))
        address, ready = await cluster._spawn(runs, ["-m", "flint.frontend.worker", "--config", config])
        assert ready["event_loop"] == runs
        async with grpc.aio.insecure_channel(address) as channel:
            stub = flint_pb2_grpc.FlintStub(channel)
            messages = [m async for m in stub.Complete(pb.CompleteRequest(prefix="def g():",
                                                                          sampling=pb.Sampling(max_tokens=12)))]
        assert "".join(m.delta.text for m in messages if m.WhichOneof("kind") == "delta") == expected
        assert messages[-1].WhichOneof("kind") == "final"
    monkeypatch.setenv("FLINT_EVENT_LOOP", "trio")
    with pytest.raises(RuntimeError, match="FLINT_EVENT_LOOP must be one of uvloop, asyncio"):
        await cluster._spawn("bad", ["-m", "flint.frontend.worker", "--config", config])
