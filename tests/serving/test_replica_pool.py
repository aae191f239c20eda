"""The front-end's registry view (ReplicaPool) against real Redis (Valkey): routing does not wait on a read."""

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis

from flint.frontend.replicas import ReplicaPool
from flint.frontend.routing import PowerOfTwoChoices
from flint.replica.registry import ReplicaInfo, ReplicaRegistry

INTERVAL_S = 0.2


def replica(replica_id: str) -> ReplicaInfo:
    return ReplicaInfo(replica_id=replica_id, address=f"127.0.0.1:{1000 + len(replica_id)}", model="m",
                       max_context_tokens=64)


@pytest.fixture
async def registry(valkey_url):
    redis = aioredis.Redis.from_url(valkey_url)
    registry = ReplicaRegistry(redis, f"pool-{secrets.token_hex(4)}")
    pool = ReplicaPool(registry, PowerOfTwoChoices(seed=0), wait_s=0.5, internal_token="t",
                       refresh_interval_s=INTERVAL_S)
    try:
        yield redis, registry, pool
    finally:
        await pool.close()
        await redis.aclose()


async def test_a_view_past_its_interval_routes_at_once_while_it_is_read_again_behind(registry):
    redis, registry, pool = registry
    await registry.publish(replica("a"), ttl_s=60)
    assert (await pool.pick()).replica_id == "a"          # no view yet: read first
    await registry.publish(replica("bb"), ttl_s=60)
    await asyncio.sleep(INTERVAL_S * 1.25)                # stale, not yet twice the interval
    await redis.execute_command("CLIENT", "PAUSE", 600, "ALL")   # a read now waits 0.6 s
    picked = await asyncio.wait_for(pool.pick(), 0.3)     # routed from the view it had, not held by the read
    assert picked.replica_id == "a"
    async with asyncio.timeout(5):                        # the read behind it brings the new replica
        while {r.replica_id for r in await pool.replicas()} != {"a", "bb"}:
            await asyncio.sleep(0.02)


async def test_a_view_older_than_twice_its_interval_is_read_before_routing(registry):
    redis, registry, pool = registry
    await registry.publish(replica("a"), ttl_s=60)
    await pool.pick()
    await registry.publish(replica("bb"), ttl_s=60)
    await asyncio.sleep(INTERVAL_S * 2.5)
    await pool.pick()
    assert {r.replica_id for r in pool._cached} == {"a", "bb"}


async def test_generate_goes_on_the_engine_link_of_a_replica_that_publishes_one_else_on_grpc(registry):
    from dataclasses import replace

    from flint.link.client import LinkClient
    from flint.security.internal import EngineClient

    _, _, pool = registry
    linked = replace(replica("a"), link_address="127.0.0.1:1999")
    assert isinstance(pool.stub(linked)._generate, LinkClient)
    assert pool.stub(linked)._generate is pool.stub(linked)._generate      # one link per replica
    assert isinstance(pool.stub(replica("older"))._generate, EngineClient)  # no link address (an older replica)
    assert isinstance(pool.stub(linked)._client, EngineClient)              # the stall probe's Load stays on gRPC
    grpc_only = ReplicaPool(pool._registry, PowerOfTwoChoices(seed=0), wait_s=0.5, internal_token="t",
                            engine_transport="grpc")
    assert isinstance(grpc_only.stub(linked)._generate, EngineClient)
    await grpc_only.close()


async def test_the_channel_and_link_of_a_replica_gone_from_the_registry_are_closed_once_no_call_is_open(registry):
    """A replica that left (scaled down, restarted at a new address) must not leave its gRPC channel and engine
    link behind in every worker for the life of the process; one with a call still open keeps them until it ends."""
    import grpc
    from dataclasses import replace

    from flint.internal.v1 import engine_pb2

    _, registry, pool = registry
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)  # takes calls, never answers
    try:
        gone = replace(replica("a"), link_address="127.0.0.1:1")
        busy = replace(replica("bb"), link_address=f"127.0.0.1:{silent.sockets[0].getsockname()[1]}")
        for r in (gone, busy):
            await registry.publish(r, ttl_s=60)
        await pool.replicas(fresh=True)
        link = pool.stub(gone)._generate
        channel = pool._channels[gone.address][0]
        open_call = pool.stub(busy).Generate(engine_pb2.GenerateRequest(request_id="x"), timeout=30)
        await registry.remove(gone.replica_id)
        await registry.remove(busy.replica_id)
        await pool.replicas(fresh=True)
        assert gone.address not in pool._channels and gone.link_address not in pool._links
        async with asyncio.timeout(5):   # the closes run behind the read
            while not (link.closed and channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN):
                await asyncio.sleep(0.01)
        assert busy.address in pool._channels and busy.link_address in pool._links   # its call is still open
        open_call.cancel()
        await asyncio.sleep(0)
        await pool.replicas(fresh=True)
        assert busy.address not in pool._channels and busy.link_address not in pool._links
    finally:
        silent.close()
