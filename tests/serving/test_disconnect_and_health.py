"""Health and reflection answer; helpers the HTTP door's disconnect test shares (the gRPC disconnect tests are
tests/reliability/test_client_disconnect.py, whose streams outlast the disconnect on any CPU)."""

import asyncio

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flint.internal.v1 import engine_pb2
from flint.security.internal import EngineClient, resolve_token
from flint.replica.registry import ReplicaRegistry


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
