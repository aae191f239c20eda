"""A client that disconnects mid-stream frees its engine slot; health and reflection answer."""

import asyncio

import grpc
import msgpack
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.services import long_edit

from flint.internal.v1 import engine_pb2
from flint.security.internal import EngineClient, resolve_token
from flint.replica.registry import ReplicaRegistry
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc


async def cancelled_total(redis_url: str, replica_address: str) -> int:
    """Generate calls the replica saw cancelled by their caller (from its Redis registry record)."""
    redis = aioredis.Redis.from_url(redis_url)
    try:
        replicas = await ReplicaRegistry(redis).list()
    finally:
        await redis.aclose()
    return next(r.cancelled_total for r in replicas if r.address == replica_address)


async def engine_running(replica_address: str) -> int:
    async with grpc.aio.insecure_channel(replica_address) as channel:
        report = await EngineClient(channel, resolve_token()).Load(engine_pb2.LoadRequest())
    return report.running + report.waiting


async def wait_until(predicate, timeout_s: float = 30.0, interval_s: float = 0.05):
    """Poll an async predicate; returns its last value (tests assert on it, never on time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not (value := await predicate()) and loop.time() < deadline:
        await asyncio.sleep(interval_s)
    return value


async def test_client_disconnect_mid_stream_frees_the_engine_slot(frontend_workers, engine_replica, valkey_url):
    channel = grpc.aio.insecure_channel(frontend_workers[0].address)
    stub = flint_pb2_grpc.FlintStub(channel)
    call = stub.Edit(long_edit("disconnect-1"))
    assert (await call.read()).WhichOneof("kind") == "accepted"
    assert (await call.read()).WhichOneof("kind") == "delta"
    assert await engine_running(engine_replica.address) >= 1
    cancelled_before = await cancelled_total(valkey_url, engine_replica.address)
    await channel.close()  # the client goes away without a word

    async def slot_freed():
        # The engine call was cancelled (not run to its 900 tokens) and nothing is left running.
        return (await cancelled_total(valkey_url, engine_replica.address) > cancelled_before
                and await engine_running(engine_replica.address) == 0)

    assert await wait_until(slot_freed)
    redis = aioredis.Redis.from_url(valkey_url)
    try:
        async def recorded_interrupted():
            raw = await redis.get("flint:req:disconnect-1")
            return raw is not None and msgpack.unpackb(raw)["state"] == "interrupted"

        assert await wait_until(recorded_interrupted)
    finally:
        await redis.aclose()


async def test_session_client_disconnect_frees_the_engine_slot(frontend_workers, engine_replica, valkey_url):
    channel = grpc.aio.insecure_channel(frontend_workers[1].address)
    outgoing = [pb.ClientMessage(edit=long_edit("disconnect-session"))]

    async def requests():
        for message in outgoing:
            yield message
        await asyncio.Event().wait()  # keep the stream open, as an editor does

    call = flint_pb2_grpc.FlintStub(channel).Session(requests())
    assert (await call.read()).WhichOneof("kind") == "accepted"
    assert (await call.read()).WhichOneof("kind") == "delta"
    cancelled_before = await cancelled_total(valkey_url, engine_replica.address)
    await channel.close()

    async def slot_freed():
        return (await cancelled_total(valkey_url, engine_replica.address) > cancelled_before
                and await engine_running(engine_replica.address) == 0)

    assert await wait_until(slot_freed)


async def test_health_check_reports_serving(frontend_workers):
    async with grpc.aio.insecure_channel(frontend_workers[1].address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "flint.v1.Flint"):
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_the_public_service(frontend_workers):
    async with grpc.aio.insecure_channel(frontend_workers[0].address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        responses = [r async for r in stub.ServerReflectionInfo(iter([request]))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"flint.v1.Flint", "grpc.health.v1.Health"} <= names
