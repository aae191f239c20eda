"""Health means "can serve": a replica whose engine broke says NOT_SERVING, leaves routing and exits.

The engine really breaks: the engine config's test-only `fault_step_error_at` makes the step thread raise
at a chosen step, as a kernel or model bug would, while a request is decoding. Real engines on the tiny
checkpoint, real ReplicaServers (in this process, or a replica process as Ray runs one), a real front-end
worker, real Valkey.
"""

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flint.internal.v1 import engine_pb2
from flint.replica.host import EXIT_ENGINE_BROKEN
from flint.replica.registry import ReplicaRegistry
from flint.replica.server import ENGINE_SERVICE
from flint.security.internal import EngineClient, resolve_token
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc
from rel_support import eventually

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def health(channel, service: str = ENGINE_SERVICE):
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return reply.status


async def run_until_the_fault(channel) -> grpc.aio.AioRpcError:
    """A request that decodes on the replica until its step thread raises; returns the stream's error."""
    request = engine_pb2.GenerateRequest(request_id="hits-the-fault", prefix="def f(x):",
                                         sampling=engine_pb2.SamplingParams(max_tokens=200))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in EngineClient(channel, resolve_token()).Generate(request):
            pass
    return info.value


async def test_replica_whose_step_thread_failed_goes_not_serving_and_front_ends_stop_routing_to_it(
        cluster, valkey_url, key_prefix):
    broken, _ = await cluster.add_replica("r-broken", fault_step_error_at=3)
    await cluster.add_replica("r-ok")
    worker = await cluster.add_worker("w1")
    async with grpc.aio.insecure_channel(broken.address) as channel:
        assert await health(channel) == SERVING
        error = await run_until_the_fault(channel)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "step failed" in error.details()
        await eventually(lambda: _is(health(channel), NOT_SERVING), timeout_s=5)
        assert await health(channel, "") == NOT_SERVING
        report = await EngineClient(channel, resolve_token()).Load(engine_pb2.LoadRequest())
        assert not report.healthy
    redis = aioredis.Redis.from_url(valkey_url)
    try:
        records = {r.replica_id: r for r in await ReplicaRegistry(redis, key_prefix).list()}
    finally:
        await redis.aclose()
    assert not records["r-broken"].routable and "fault injected" in broken.broken
    await eventually(lambda: _routable(worker, {"r-ok"}), timeout_s=5)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        for i in range(6):
            done = [m async for m in stub.Complete(pb.CompleteRequest(prefix=f"f{i}", sampling=pb.Sampling(max_tokens=3)))]
            assert done[-1].final.replica_id == "r-ok"


async def test_replica_process_whose_engine_broke_exits_so_that_ray_restarts_it(cluster, valkey_url, key_prefix):
    address = await cluster.add_replica_process("r-doomed", fault_step_error_at=3)
    [process] = [proc for name, _, proc in cluster.processes if name == "r-doomed"]
    async with grpc.aio.insecure_channel(address) as channel:
        error = await run_until_the_fault(channel)
        assert error.code() == grpc.StatusCode.UNAVAILABLE
    await eventually(lambda: process.poll() is not None, timeout_s=15)
    assert process.returncode == EXIT_ENGINE_BROKEN
    redis = aioredis.Redis.from_url(valkey_url)
    try:
        assert "r-doomed" not in {r.replica_id for r in await ReplicaRegistry(redis, key_prefix).list()}
    finally:
        await redis.aclose()


async def _is(status, wanted) -> bool:
    return await status == wanted


async def _routable(worker, ids: set[str]) -> bool:
    return {r.replica_id for r in await worker._pool.replicas(fresh=True) if r.routable} == ids


async def test_ray_restarts_a_replica_actor_whose_engine_broke(ray_local, valkey_url, demo_checkpoint, key_prefix):
    import ray

    from flint.config import ReplicaConfig
    from flint.engine.config import EngineConfig
    from flint.replica.host import start_replica_actors, stop_replica_actors

    engine_config = EngineConfig.from_dict({"kv_cache_bytes": 1 << 24, "fault_step_error_at": 3},
                                           model=str(demo_checkpoint))
    replica_config = ReplicaConfig(redis_url=valkey_url, key_prefix=key_prefix, heartbeat_interval_s=0.2,
                                   heartbeat_ttl_s=1.0, grace_period_s=0.5)
    [(actor, address)] = start_replica_actors(engine_config, replica_config, count=1, num_cpus=0, timeout_s=120,
                                              max_restarts=1)
    try:
        first_pid = ray.get(actor.pid.remote())
        async with grpc.aio.insecure_channel(address) as channel:
            assert (await run_until_the_fault(channel)).code() == grpc.StatusCode.UNAVAILABLE
        new_address = await eventually(lambda: _restarted_address(actor, address), timeout_s=120, interval_s=0.5)
        assert ray.get(actor.was_restarted.remote()) is True and ray.get(actor.pid.remote()) != first_pid
        async with grpc.aio.insecure_channel(new_address) as channel:
            assert await health(channel) == SERVING     # a new engine: serving until it meets its own fault
    finally:
        stop_replica_actors([actor], grace_s=0.5)


def _restarted_address(actor, old_address: str) -> str:
    import ray

    from flint.replica.host import wait_until_serving

    try:
        address = wait_until_serving(actor, timeout_s=5)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        return ""
    return address if address and address != old_address else ""
