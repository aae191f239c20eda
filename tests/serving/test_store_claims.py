"""A request's claim through flint.respconn (the worker's claims connection) against real Valkey: what the
claim does is tested with the owner (test_request_owner); here, what the connection adds: the script after
SCRIPT FLUSH, and a lost connection seen as Redis being unavailable, with nothing half-written."""

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis
from redis import exceptions as rex

from flint.errors import InvalidArgument, Unavailable
from flint.frontend.store import RequestRecord, Store
from flint.grpc_status import as_flint_error
from flint.respconn import RespConnection


@pytest.fixture
async def store(valkey_url):
    redis, claims = aioredis.Redis.from_url(valkey_url), RespConnection.from_url(valkey_url)
    try:
        yield Store(redis, f"claims-{secrets.token_hex(4)}", session_ttl_s=60, request_ttl_s=60, claims=claims)
    finally:
        await claims.close()
        await redis.aclose()


async def test_a_claim_after_script_flush_loads_the_script_again(store):
    await store.claim_request(RequestRecord(request_id="r-1", owner="w"))
    await store.redis.script_flush()
    await store.claim_request(RequestRecord(request_id="r-2", owner="w"))
    with pytest.raises(InvalidArgument, match="already in use"):
        await store.claim_request(RequestRecord(request_id="r-2", owner="w"))
    assert (await store.get_request("r-2")).running


async def test_a_claim_whose_connection_is_lost_fails_as_redis_unavailable_and_the_next_claim_works(store):
    claims = store._claims
    client_id = await claims.call("CLIENT", "ID")
    await store.redis.client_pause(10_000, all=False)        # the claim waits in Valkey, unanswered
    try:
        claim = asyncio.ensure_future(store.claim_request(RequestRecord(request_id="r-1", owner="w")))
        async with asyncio.timeout(5):
            while not any(c["id"] == str(client_id) and c["cmd"] == "evalsha"
                          for c in await store.redis.client_list()):
                await asyncio.sleep(0.005)
        await store.redis.client_kill_filter(_id=client_id)
    finally:
        await store.redis.client_unpause()
    with pytest.raises(rex.ConnectionError) as lost:
        await claim
    error = as_flint_error(lost.value)                      # what the client gets: UNAVAILABLE, retry shortly
    assert isinstance(error, Unavailable) and "Redis" in error.message
    assert await store.get_request("r-1") is None           # killed before it ran: nothing written
    await store.claim_request(RequestRecord(request_id="r-1", owner="w"))   # a new connection
    assert (await store.get_request("r-1")).running


async def test_a_store_without_a_claims_connection_says_so():
    with pytest.raises(RuntimeError, match="claims connection"):
        await Store(None, "p", session_ttl_s=1, request_ttl_s=1).claim_request(RequestRecord("r", "w"))
