"""The front-end relay's token path: interrupts that arrive twice, coalesced deltas that stay exact."""

import asyncio

import grpc

from rel_support import expected_text
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc


async def test_an_interrupt_arriving_twice_still_ends_the_stream_with_one_final(cluster):
    """Pub/sub and the flag poll often both deliver one interrupt; the second must not swallow the Final."""
    await cluster.add_replica(token_interval_s=0.005)
    worker = await cluster.add_worker("twice")
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        # The second interrupt lands 0..8 loop turns after the first: across the window in which the
        # relay journals its interrupted Final (a Redis round trip).
        for delay in (0, 1, 2, 3, 5, 8):
            rid = f"twice-{delay}"
            call = stub.Complete(pb.CompleteRequest(request_id=rid, prefix="p", sampling=pb.Sampling(max_tokens=800)))
            messages = [await call.read(), await call.read()]
            relay = worker._bus._local[rid]
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


async def test_deltas_merged_behind_a_journal_write_keep_seq_text_and_token_counts_exact(cluster):
    """An engine that emits flat out outruns the journal's Redis writes: merged deltas, nothing lost."""
    await cluster.add_replica(token_interval_s=0.0)
    worker = await cluster.add_worker("merge")
    tokens = 300
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        messages = [m async for m in stub.Complete(pb.CompleteRequest(
            request_id="merge-1", prefix="q", sampling=pb.Sampling(max_tokens=tokens)))]
        deltas = [m.delta for m in messages if m.WhichOneof("kind") == "delta"]
        final = messages[-1].final
        assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
        assert "".join(d.text for d in deltas) == expected_text("q", tokens)
        assert sum(d.token_count for d in deltas) == tokens == final.completion_tokens
        assert final.seq == len(deltas) + 1
        assert len(deltas) < tokens, "deltas queued behind a journal write were merged"
        # What a resume replays is what the client saw: the same merged deltas, seq for seq.
        tail = [m async for m in stub.Resume(pb.ResumeRequest(request_id="merge-1", last_seq=1))]
        assert [m.delta for m in tail if m.WhichOneof("kind") == "delta"] == deltas[1:]
        assert tail[-1].final.seq == final.seq
