"""Overload: RESOURCE_EXHAUSTED with a retry delay in the status details, never a hang; the client waits it out.

Replicas run the real engine (rel_support.py); "busy" is real: a long greedy
stream holds the engine's only batch slot, so the next request waits in its
queue.
"""

import asyncio

import grpc
import pytest

from flint.admission import AdmissionConfig, saturation
from flint.client import FlintClient
from flint.errors import InvalidArgument
from flint.grpc_status import retry_after_ms_of
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc
from rel_support import engine_freed_everything, eventually

LONG = 8000  # tokens: a stream that keeps running until the test cancels it


def test_saturation_names_the_limit_that_was_hit():
    config = AdmissionConfig(max_waiting=4, max_kv_used_fraction=0.9)
    assert saturation(config, waiting=3, kv_used_fraction=0.5) == ""
    assert "queue holds 4" in saturation(config, waiting=4, kv_used_fraction=0.0)
    assert "KV cache is 95% full" in saturation(config, waiting=0, kv_used_fraction=0.95)
    with pytest.raises(InvalidArgument, match="max_kv_used_fraction"):
        AdmissionConfig(max_kv_used_fraction=1.5)


async def test_replica_queue_full_answers_resource_exhausted_with_retry_info(cluster):
    _, engine = await cluster.add_replica("r1", max_batch_size=1, admission={"max_waiting": 1, "retry_after_ms": 300})
    worker = await cluster.add_worker("w1")
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        long = pb.Sampling(max_tokens=LONG)
        running = stub.Complete(pb.CompleteRequest(prefix="a", sampling=long))
        await running.read()
        queued = stub.Complete(pb.CompleteRequest(prefix="b", sampling=long))
        await eventually(lambda: engine.load().waiting == 1)  # the engine's own queue
        refused = stub.Complete(pb.CompleteRequest(prefix="c", sampling=long))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(refused.read(), 10)
        err = info.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue holds 1" in err.details()
        keys = [k for k, _ in err.trailing_metadata()]
        assert "grpc-status-details-bin" in keys  # google.rpc.RetryInfo, readable by any gRPC client
        assert retry_after_ms_of(err.trailing_metadata()) == 300
        running.cancel()
        queued.cancel()
    await eventually(lambda: engine_freed_everything(engine))


async def test_tenant_concurrency_limit_refuses_then_admits_after_release(cluster):
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", admission={"max_inflight_per_tenant": 2, "retry_after_ms": 100})
    other = await cluster.add_worker("w2", admission={"max_inflight_per_tenant": 2, "retry_after_ms": 100})
    async with grpc.aio.insecure_channel(worker.address) as ch1, grpc.aio.insecure_channel(other.address) as ch2:
        s1, s2 = flint_pb2_grpc.FlintStub(ch1), flint_pb2_grpc.FlintStub(ch2)
        first = s1.Complete(pb.CompleteRequest(prefix="a", sampling=pb.Sampling(max_tokens=LONG)))
        second = s2.Complete(pb.CompleteRequest(prefix="b", sampling=pb.Sampling(max_tokens=LONG)))
        await first.read()
        await second.read()
        with pytest.raises(grpc.aio.AioRpcError) as info:  # the limit holds across workers (Redis)
            [m async for m in s1.Complete(pb.CompleteRequest(prefix="c", sampling=pb.Sampling(max_tokens=2)))]
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_after_ms_of(info.value.trailing_metadata()) == 100
        first.cancel()

        async def admitted():
            try:
                [m async for m in s1.Complete(pb.CompleteRequest(prefix="c", sampling=pb.Sampling(max_tokens=2)))]
                return True
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                return False

        await eventually(admitted)
        second.cancel()


async def test_client_retries_resource_exhausted_honouring_the_delay(cluster, reference):
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", admission={"max_inflight_per_tenant": 1, "retry_after_ms": 50})
    async with FlintClient(worker.address) as client:
        texts = await asyncio.gather(*(client.complete_text(f"p{i}", max_tokens=10, timeout_s=30)
                                       for i in range(3)))
        assert texts == [await reference.atext(f"p{i}", 10) for i in range(3)]
        assert client.retries >= 2
