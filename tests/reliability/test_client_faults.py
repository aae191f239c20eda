"""flint.client under faults: front-end and engine replica deaths are invisible to the caller but for time.

Replicas run the real engine on the tiny checkpoint (rel_support.py); a stream
is kept running across a kill by asking for many tokens, and the text a client
ends with is compared to the same request run uninterrupted (`reference`).
"""

import asyncio

import grpc
import pytest

from flint.client import FlintClient, RetryPolicy, SyncFlintClient
from flint.errors import DeadlineExceeded
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc
from rel_support import aborts, engine_freed_everything, eventually

LONG = 8000  # tokens: seconds of decoding, for streams that must still run when something is killed


async def test_front_end_worker_dies_and_client_resumes_on_another(cluster, reference):
    expected = await reference.atext("def main():", 1000)
    await cluster.add_replica("r1")
    doomed = await cluster.add_worker_process("w-doomed")
    survivor = await cluster.add_worker("w-survivor")
    async with FlintClient([doomed, survivor.address]) as client:
        seqs, text = [], []
        async for message in client.complete("def main():", max_tokens=1000):
            if message.WhichOneof("kind") == "delta":
                seqs.append(message.delta.seq)
                text.append(message.delta.text)
                if message.delta.seq == 5:
                    cluster.kill_process("w-doomed")  # SIGKILL: no drain, no goodbye
            elif message.WhichOneof("kind") == "final":
                final = message.final
        assert client.resumes >= 1, "the stream was cut by the kill and resumed on the survivor"
    assert seqs == list(range(1, len(seqs) + 1)), "each seq exactly once across the failover"
    assert "".join(text) == expected
    assert final.seq == len(seqs) + 1 and final.completion_tokens == 1000


async def test_engine_replica_dies_streams_end_unavailable_and_new_requests_route_elsewhere(cluster):
    await cluster.add_replica_process("r-doomed")
    worker = await cluster.add_worker("w1", routing="least_loaded")
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        call = stub.Complete(pb.CompleteRequest(request_id="on-doomed", prefix="x",
                                                sampling=pb.Sampling(max_tokens=LONG)))
        assert (await call.read()).WhichOneof("kind") == "accepted"
        await call.read()
        await cluster.add_replica("r-survivor")
        cluster.kill_process("r-doomed")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while (message := await call.read()) is not grpc.aio.EOF:
                assert message.WhichOneof("kind") != "final", "the stream ended before the replica was killed"
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "engine replica" in info.value.details()
        # New requests go to the surviving replica (the dead one's registry entry may linger a heartbeat TTL).
        async def served_by_survivor():
            try:
                done = [m async for m in stub.Complete(pb.CompleteRequest(prefix="y",
                                                                          sampling=pb.Sampling(max_tokens=3)))]
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
                return False
            return done[-1].final.replica_id == "r-survivor"
        await eventually(served_by_survivor, timeout_s=10)


async def test_client_resumes_a_stream_whose_engine_replica_died(cluster, reference):
    expected = await reference.atext("import os\n", 1000)  # also loads the engine code: the survivor starts fast
    await cluster.add_replica_process("r-doomed")
    worker = await cluster.add_worker("w1")
    async with FlintClient(worker.address) as client:
        seqs, text = [], []
        async for message in client.complete("import os\n", max_tokens=1000):
            if message.WhichOneof("kind") == "delta":
                seqs.append(message.delta.seq)
                text.append(message.delta.text)
                if message.delta.seq == 4:
                    await cluster.add_replica("r-survivor")
                    cluster.kill_process("r-doomed")
            elif message.WhichOneof("kind") == "final":
                final = message.final
    assert seqs == list(range(1, len(seqs) + 1)) and "".join(text) == expected
    assert final.replica_id == "r-survivor" and final.completion_tokens == 1000


async def test_deadline_ends_the_request_and_frees_engine_work(cluster):
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    async with FlintClient(worker.address) as client:
        with pytest.raises(DeadlineExceeded):
            async for message in client.complete("slow", max_tokens=LONG, request_id="dl-1", timeout_s=0.5):
                assert message.WhichOneof("kind") != "final", "the request finished before its deadline"
    # The engine aborted the request at a step (its counter) and gave back its batch slot and KV blocks.
    await eventually(lambda: aborts(engine) == 1 and engine.load().running == 0, timeout_s=5)
    assert engine_freed_everything(engine)


async def test_retries_give_up_after_max_attempts_with_the_last_error():
    async with FlintClient("127.0.0.1:1", retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01)) as client:
        with pytest.raises(Exception) as info:
            await client.complete_text("x", timeout_s=10)
        assert type(info.value).__name__ == "Unavailable" and client.retries == 1


def test_sync_client_streams_and_interrupts(cluster, reference):
    loop = asyncio.new_event_loop()  # the cluster runs on this test's own loop in a thread

    async def start():
        await cluster.add_replica("r1")
        return (await cluster.add_worker("w1")).address

    import threading

    ready = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with SyncFlintClient(ready) as client:
            assert client.complete_text("abc", max_tokens=5) == reference.text("abc", 5)
            messages = list(client.complete("abc", max_tokens=3))
            kinds = [m.WhichOneof("kind") for m in messages]
            assert kinds[0] == "accepted" and kinds[-1] == "final" and set(kinds[1:-1]) == {"delta"}
            assert sum(m.delta.token_count for m in messages[1:-1]) == messages[-1].final.completion_tokens == 3
            messages = []
            for message in client.complete("abc", max_tokens=LONG):
                messages.append(message)
                if message.WhichOneof("kind") == "delta" and message.delta.seq == 2:
                    ack = client.interrupt(message.delta.request_id)
            assert ack.was_running and messages[-1].final.finish_reason == pb.FINISH_REASON_INTERRUPTED
            assert max(m.delta.seq for m in messages if m.WhichOneof("kind") == "delta") == ack.last_seq
    finally:
        asyncio.run_coroutine_threadsafe(cluster.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
