"""Tenants cannot reach each other's requests: ids are scoped per tenant, interrupts check the tenant everywhere.

Two tenants with API keys in a key file; real Valkey, real front-end workers
and the real engine (rel_support.py), outputs checked against `reference`.
"""

import asyncio

import msgpack
import pytest
import redis.asyncio as aioredis

from flint.client import FlintClient, RetryPolicy
from flint.errors import NotFound
from flint.v1 import flint_pb2 as pb
from rel_support import eventually

LONG = 8000
# Near the test model's whole context (16,384): a stream that has to outlast a wait. This 2-layer model decodes
# 6,500 tokens/s in process on a fast CPU (a 2-core Zen 5 EPYC), where 8,000 tokens ended within the 3 s the
# record-TTL test once slept.
LONGEST = 16_000
NO_RETRY = RetryPolicy(max_attempts=1)


async def request_keys(redis, prefix: str, request_id: str) -> list[bytes]:
    """The request-record keys in Redis whose id ends with `request_id` (whatever the tenant scoping looks like)."""
    return [k async for k in redis.scan_iter(match=f"{prefix}:req:*{request_id}") if not k.endswith(b":interrupt")]


async def test_request_ids_are_scoped_per_tenant(cluster, tenant_keys, reference):
    path, key_a, key_b = tenant_keys
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path})
    async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as a, \
            FlintClient(worker.address, api_key=key_b, retry=NO_RETRY) as b:
        a_stream = a.complete("tenant a's prompt", max_tokens=LONG, request_id="shared-id")
        assert (await a_stream.__anext__()).accepted.request_id == "shared-id"
        # B may use the same id: no "already in use", nothing learned about A, its own request runs.
        b_messages = [m async for m in b.complete("b's", max_tokens=3, request_id="shared-id")]
        assert b_messages[0].accepted.request_id == "shared-id"
        assert "".join(m.delta.text for m in b_messages if m.WhichOneof("kind") == "delta") == \
            await reference.atext("b's", 3)
        assert (await b.interrupt("shared-id")).was_running is False  # B's own, finished: A's keeps running
        assert engine.load().running == 1
        ack = await a.interrupt("shared-id")
        assert ack.was_running
        rest = [m async for m in a_stream]
        assert rest[-1].final.finish_reason == pb.FINISH_REASON_INTERRUPTED
        # B reusing the id once A's is over does not touch A's journal: A can still resume it.
        assert await b.complete_text("again", max_tokens=2, request_id="shared-id")
        replay = [m async for m in a.resume("shared-id", 0)]
        assert replay[-1].final.finish_reason == pb.FINISH_REASON_INTERRUPTED


async def test_interrupt_without_a_record_is_refused_for_other_tenants(cluster, tenant_keys):
    path, key_a, key_b = tenant_keys
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path})
    redis = aioredis.Redis.from_url(cluster.redis_url)
    try:
        async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as a, \
                FlintClient(worker.address, api_key=key_b, retry=NO_RETRY) as b:
            stream = a.complete("a long one", max_tokens=LONG, request_id="a-req")
            await stream.__anext__()
            for key in await request_keys(redis, cluster.key_prefix, "a-req"):  # as after a Redis restart
                await redis.delete(key)
            with pytest.raises(NotFound):
                await b.interrupt("a-req")
            assert engine.load().running == 1, "another tenant's interrupt stopped A's request"
            assert (await a.interrupt("a-req")).was_running  # its own tenant, on the owning worker: still works
            await stream.aclose()
    finally:
        await redis.aclose()


async def test_request_record_ttl_is_refreshed_while_it_runs(cluster, tenant_keys):
    path, key_a, key_b = tenant_keys
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", request_ttl_s=0.3, security={"api_keys_file": path})
    redis = aioredis.Redis.from_url(cluster.redis_url)
    try:
        async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as a, \
                FlintClient(worker.address, api_key=key_b, retry=NO_RETRY) as b:
            stream = a.complete("a long one", max_tokens=LONGEST, request_id="long-req")
            await stream.__anext__()
            await asyncio.sleep(1.0)  # over three record TTLs
            [key] = await request_keys(redis, cluster.key_prefix, "long-req")
            record = msgpack.unpackb(await redis.get(key))
            assert record["state"] == "running" and record["tenant"] == "tenant-a"
            with pytest.raises(NotFound):
                await b.interrupt("long-req")
            assert (await a.interrupt("long-req")).was_running
            await stream.aclose()
    finally:
        await redis.aclose()


async def test_a_takeover_keeps_the_tenant_of_the_journal(cluster, tenant_keys, reference):
    path, key_a, _ = tenant_keys
    expected = await reference.atext("def keep(", 600)
    await cluster.add_replica("r1")
    doomed = await cluster.add_worker_process("w-doomed", security={"api_keys_file": path})
    survivor = await cluster.add_worker("w-survivor", security={"api_keys_file": path})
    redis = aioredis.Redis.from_url(cluster.redis_url)
    try:
        async with FlintClient(doomed, api_key=key_a, retry=NO_RETRY, resume=False) as a:
            seqs, text = [], []
            stream = a.complete("def keep(", max_tokens=600, request_id="kept")
            async for message in stream:
                if message.WhichOneof("kind") == "delta":
                    seqs.append(message.delta.seq)
                    text.append(message.delta.text)
                    if message.delta.seq == 3:
                        break
            cluster.kill_process("w-doomed")
            await stream.aclose()
        for key in await request_keys(redis, cluster.key_prefix, "kept"):  # its record is gone too (expired)
            await redis.delete(key)
        async with FlintClient(survivor.address, api_key=key_a, retry=NO_RETRY) as a2:
            async for message in a2.resume("kept", seqs[-1]):
                if message.WhichOneof("kind") == "delta":
                    text.append(message.delta.text)
        assert "".join(text) == expected

        async def taken_over_record():
            found = await request_keys(redis, cluster.key_prefix, "kept")
            return found and msgpack.unpackb(await redis.get(found[0]))
        record = await eventually(taken_over_record)
        assert record["owner"] == "w-survivor" and record["tenant"] == "tenant-a"
    finally:
        await redis.aclose()
