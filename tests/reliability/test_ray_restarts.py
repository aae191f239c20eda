"""An engine replica's process dies: its streams end UNAVAILABLE, the other replica takes new requests, and Ray
restarts the dead one, which registers again and serves.

Real parts: two replica actors (`start_replica_actors`, the reliability checkpoint through the real loader) on the
local Ray instance, a front-end worker process, Valkey. The replica is killed with SIGKILL of its actor process, so
Ray sees a crash (not `ray.kill`, which is an orderly stop). The stream the kill ends is a 16,000-token completion
on that checkpoint, whose greedy output never stops early (rel_support.py): seconds of decoding on any CPU. A
900-token edit on the serving tests' model used to stand there, and it ended before the kill once the fp32
Linears got faster.
"""

from __future__ import annotations

import asyncio
import os
import signal

import grpc
import pytest
from rel_support import ENGINE
from support.services import routable_replicas, start_worker_process, stop_worker_process, wait_for

from flint.config import ReplicaConfig
from flint.engine.config import EngineConfig
from flint.internal.v1 import engine_pb2
from flint.replica.host import start_replica_actors, stop_replica_actors, wait_until_serving
from flint.security.internal import EngineClient, resolve_token
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

KEY_PREFIX = "flint-ray-restart"
LONG = 16_000   # tokens of the stream the kill ends


async def running(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        return (await EngineClient(channel, resolve_token()).Load(engine_pb2.LoadRequest())).running


@pytest.fixture
def two_replicas(ray_local, valkey_url, rel_checkpoint):
    engine_config = EngineConfig.from_dict(ENGINE, model=str(rel_checkpoint))
    replica_config = ReplicaConfig(redis_url=valkey_url, key_prefix=KEY_PREFIX, heartbeat_interval_s=0.5,
                                   heartbeat_ttl_s=2.0, grace_period_s=1.0)
    pairs = start_replica_actors(engine_config, replica_config, count=2, num_cpus=0, timeout_s=120,
                                 max_restarts=1)
    try:
        yield pairs
    finally:
        stop_replica_actors([actor for actor, _ in pairs], grace_s=1.0)


PROMPTS = [f"def total_{i}(xs):\n    " for i in range(3)]


async def complete(stub, request_id: str, prefix: str) -> tuple[str, pb.Final]:
    """Text and Final of a seeded completion (same seed, same model: same text on any replica)."""
    messages = [m async for m in stub.Complete(pb.CompleteRequest(
        request_id=request_id, prefix=prefix, sampling=pb.Sampling(max_tokens=8, temperature=1.0, seed=7)))]
    text = "".join(m.delta.text for m in messages if m.WhichOneof("kind") == "delta")
    return text, messages[-1].final


async def test_a_crashed_replica_ends_its_streams_unavailable_and_ray_restarts_it(two_replicas, valkey_url):
    import ray

    worker = start_worker_process(valkey_url, "restart-worker", key_prefix=KEY_PREFIX)
    try:
        async with grpc.aio.insecure_channel(worker.address) as channel:
            stub = flint_pb2_grpc.FlintStub(channel)
            expected = [(await complete(stub, f"restart-before-{i}", p))[0] for i, p in enumerate(PROMPTS)]

            call = stub.Complete(pb.CompleteRequest(request_id="restart-doomed", prefix="p",
                                                    sampling=pb.Sampling(max_tokens=LONG)))
            assert (await call.read()).WhichOneof("kind") == "accepted"
            assert (await call.read()).WhichOneof("kind") == "delta"
            counts = [await running(address) for _, address in two_replicas]
            assert sorted(counts) == [0, 1], counts
            doomed_actor, doomed_address = two_replicas[counts.index(1)]
            survivor_actor, _ = two_replicas[counts.index(0)]
            survivor_id = ray.get(survivor_actor.replica_id.remote())
            doomed_id = ray.get(doomed_actor.replica_id.remote())
            assert ray.get(doomed_actor.was_restarted.remote()) is False

            os.kill(ray.get(doomed_actor.pid.remote()), signal.SIGKILL)

            with pytest.raises(grpc.aio.AioRpcError) as info:
                while await call.read() is not grpc.aio.EOF:
                    pass
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
            assert info.value.details()

            # Ray restarts the actor; the new instance starts its engine and server by itself (nobody calls
            # start on it) and registers under a new id and address.
            address = await asyncio.to_thread(wait_until_serving, doomed_actor, 120)
            assert address and address != doomed_address
            assert ray.get(doomed_actor.was_restarted.remote()) is True
            new_id = ray.get(doomed_actor.replica_id.remote())
            assert new_id and new_id != doomed_id
            replicas = await wait_for(
                lambda: _routable_without(valkey_url, doomed_id, expect={survivor_id, new_id}),
                "the restarted replica to register and the dead one to drop out")
            assert replicas[new_id] == address

            # New requests go to live replicas only.
            for i, prefix in enumerate(PROMPTS):
                text, final = await complete(stub, f"restart-live-{i}", prefix)
                assert final.replica_id in (survivor_id, new_id) and text == expected[i]

            # With the survivor gone for good, the restarted replica alone serves, with the same output as
            # before the crash.
            ray.kill(survivor_actor, no_restart=True)
            await wait_for(lambda: _routable_without(valkey_url, survivor_id, expect={new_id}),
                           "the stopped survivor to drop out")
            for i, prefix in enumerate(PROMPTS):
                text, final = await complete(stub, f"restart-after-{i}", prefix)
                assert final.replica_id == new_id
                assert text == expected[i]
    finally:
        stop_worker_process(worker.process)


async def _routable_without(valkey_url: str, dead_id: str, expect: set[str]) -> dict[str, str] | None:
    replicas = await routable_replicas(valkey_url, KEY_PREFIX)
    return replicas if dead_id not in replicas and set(replicas) == expect else None
