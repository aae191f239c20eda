"""A shard worker of a sharded replica (PP=2) dies mid-stream: the stream ends UNAVAILABLE (retryable), Serve's
health check finds the lost shard and replaces the replica (new shard workers), and the replacement serves the
same output as before.

Real parts: the 3-node local Ray cluster, a Ray Serve deployment whose replica runs two shard workers (the demo
checkpoint through the real loader, torch.distributed gloo between them), a front-end worker process, Valkey.
The shard worker is killed with SIGKILL of its process, as a crash or an OOM kill would end it.
"""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest
from support.services import (TEST_CONTEXT_TOKENS, long_edit, routable_replicas, start_worker_process,
                              stop_worker_process, wait_for)

from flint.distributed.serve import APP_NAME, DEPLOYMENT_NAME, ServeDeploymentConfig, deploy
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

KEY_PREFIX = "flint-shard-death"


@pytest.fixture(scope="module")
def sharded_replica(cluster_ray, valkey_url, demo_checkpoint):
    from ray import serve

    cfg = ServeDeploymentConfig(
        redis_url=valkey_url, min_replicas=1, max_replicas=1, num_cpus=0.25,
        engine={"model": str(demo_checkpoint), "max_context_tokens": TEST_CONTEXT_TOKENS,
                "kv_cache_bytes": 1 << 24},
        sharding={"pp": 2, "step_timeout_s": 20.0},
        replica={"key_prefix": KEY_PREFIX, "heartbeat_interval_s": 0.5, "heartbeat_ttl_s": 2.0},
        drain_grace_s=1.0, health_check_period_s=1.0, health_check_timeout_s=10.0,
    )
    deploy(cfg)
    try:
        yield serve.get_deployment_handle(DEPLOYMENT_NAME, app_name=APP_NAME)
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()


async def seeded_completion(stub, request_id: str) -> tuple[str, pb.Final]:
    messages = [m async for m in stub.Complete(pb.CompleteRequest(
        request_id=request_id, prefix="def area(r):\n    ",
        sampling=pb.Sampling(max_tokens=8, temperature=1.0, seed=11)), timeout=120)]
    return "".join(m.delta.text for m in messages if m.WhichOneof("kind") == "delta"), messages[-1].final


async def test_a_dead_shard_worker_ends_streams_unavailable_and_the_replica_is_replaced(sharded_replica,
                                                                                       valkey_url):
    [first_id] = await wait_for(lambda: routable_replicas(valkey_url, KEY_PREFIX), "the sharded replica to register",
                                timeout_s=180)
    info = await sharded_replica.info.remote()
    assert info["replica_id"] == first_id
    assert sorted(s["stage"] for s in info["shards"]) == [0, 1], info["shards"]

    worker = start_worker_process(valkey_url, "shard-death-worker", key_prefix=KEY_PREFIX)
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = flint_pb2_grpc.FlintStub(channel)
            expected, final = await seeded_completion(stub, "shard-before")
            assert final.replica_id == first_id

            call = stub.Edit(long_edit("shard-doomed", 900))
            assert (await call.read()).WhichOneof("kind") == "accepted"
            assert (await call.read()).WhichOneof("kind") == "delta"
            [last_stage] = [s for s in info["shards"] if s["stage"] == 1]
            os.kill(last_stage["pid"], signal.SIGKILL)

            with pytest.raises(grpc.aio.AioRpcError) as error:
                while await asyncio.wait_for(call.read(), 60) is not grpc.aio.EOF:
                    pass
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value
            assert "retry" in error.value.details() or "resume" in error.value.details(), error.value.details()

            # Serve's health check sees the lost shard and starts a new replica (with new shard workers).
            async def replaced():
                ids = set(await routable_replicas(valkey_url, KEY_PREFIX))
                return ids if ids and first_id not in ids else None

            [second_id] = await wait_for(replaced, "Serve to replace the replica", timeout_s=180)
            info = await sharded_replica.info.remote()
            assert info["replica_id"] == second_id
            assert last_stage["pid"] not in {s["pid"] for s in info["shards"]}

            text, final = await seeded_completion(stub, "shard-after")
            assert final.replica_id == second_id
            assert text == expected
    finally:
        stop_worker_process(worker.process)
