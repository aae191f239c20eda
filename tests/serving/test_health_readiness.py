"""gRPC health and HTTP /health follow readiness: NOT_SERVING while no replica is routable or Redis is down."""

import aiohttp
import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_disconnect_and_health import wait_until

from flint.config import FrontendConfig
from flint.frontend.server import FrontendWorker
from flint.replica.registry import ReplicaInfo, ReplicaRegistry
from flint.valkey import EmbeddedValkey

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_tracks_replicas_and_redis():
    valkey = EmbeddedValkey()
    url = valkey.start()
    worker = FrontendWorker(FrontendConfig(redis_url=url, port=0, http_port=0, reuse_port=False,
                                           internal_token="t" * 32))
    await worker.start()
    channel = grpc.aio.insecure_channel(worker.address)
    health = health_pb2_grpc.HealthStub(channel)
    http = aiohttp.ClientSession()
    redis = aioredis.Redis.from_url(url)

    async def state(want_grpc, want_http):
        grpc_status = (await health.Check(health_pb2.HealthCheckRequest(service="flint.v1.Flint"))).status
        async with http.get(f"http://127.0.0.1:{worker.http_port}/health") as r:
            return grpc_status == want_grpc and r.status == want_http and (await r.json())

    try:
        body = await wait_until(lambda: state(NOT_SERVING, 503))       # Redis is up but no replica registered
        assert body and "no engine replica is routable" in body["reason"]
        await ReplicaRegistry(redis).publish(ReplicaInfo("r1", "127.0.0.1:1", "m", 1024), ttl_s=60)
        assert await wait_until(lambda: state(SERVING, 200))
        await ReplicaRegistry(redis).publish(ReplicaInfo("r1", "127.0.0.1:1", "m", 1024, draining=True), ttl_s=60)
        assert await wait_until(lambda: state(NOT_SERVING, 503))       # its only replica is draining
        await ReplicaRegistry(redis).publish(ReplicaInfo("r1", "127.0.0.1:1", "m", 1024), ttl_s=60)
        assert await wait_until(lambda: state(SERVING, 200))
        await redis.aclose()
        valkey.stop()
        body = await wait_until(lambda: state(NOT_SERVING, 503))
        assert body and "Redis does not answer" in body["reason"]
    finally:
        await http.close()
        await channel.close()
        await worker.stop(0)
        valkey.stop()
