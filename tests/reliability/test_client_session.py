"""flint.client sessions: interleaved requests, interrupt and redirect, and resume after the worker dies.

Replicas run the real engine (rel_support.py); texts are checked against the
same request run uninterrupted (`reference`).
"""

from flint.client import FlintClient
from flint.v1 import flint_pb2 as pb
from rel_support import aborts, eventually

LONG = 8000  # tokens: a stream that keeps running until the test interrupts it


async def test_session_interrupt_and_redirect(cluster, reference):
    expected = await reference.atext("def fast(", 5)
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    async with FlintClient(worker.address) as client, client.session() as session:
        assert session.session_id
        long = session.complete("def slow(", max_tokens=LONG)
        accepted = await long.__anext__()
        old_id = accepted.accepted.request_id
        await long.__anext__()
        text = [m.delta.text async for m in session.redirect(old_id, "def fast(", max_tokens=5)
                if m.WhichOneof("kind") == "delta"]
        assert "".join(text) == expected
        rest = [m async for m in long]
        assert rest[-1].final.finish_reason == pb.FINISH_REASON_INTERRUPTED
        third = session.complete("x", max_tokens=LONG)
        third_id = (await third.__anext__()).accepted.request_id
        ack = await session.interrupt(third_id)
        assert ack.was_running
        assert [m async for m in third][-1].final.finish_reason == pb.FINISH_REASON_INTERRUPTED
    await eventually(lambda: aborts(engine) == 2 and engine.load().running == 0)  # both interrupted ones left


async def test_session_resumes_its_requests_after_the_worker_dies(cluster, reference):
    expected = await reference.atext("def keep(", 1000)
    await cluster.add_replica("r1")
    doomed = await cluster.add_worker_process("w-doomed")
    survivor = await cluster.add_worker("w-survivor")
    async with FlintClient([doomed, survivor.address]) as client, client.session() as session:
        seqs, text = [], []
        async for message in session.complete("def keep(", max_tokens=1000):
            if message.WhichOneof("kind") == "delta":
                seqs.append(message.delta.seq)
                text.append(message.delta.text)
                if message.delta.seq == 4:
                    cluster.kill_process("w-doomed")
        assert session.reconnects >= 1
    assert seqs == list(range(1, len(seqs) + 1)) and "".join(text) == expected
