"""What one tenant may hold: streams, resumes and sessions are capped per tenant; Interrupt, Resume and Open are
rate-limited like requests; the worker's heartbeat has its own Redis connection.

Two tenants with API keys; real Valkey, front-end worker and engine (rel_support.py).
"""

import asyncio

import grpc
import pytest

from flint.client import FlintClient, RetryPolicy
from flint.errors import NotFound, ResourceExhausted
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc
from rel_support import eventually

LONG = 8000
NO_RETRY = RetryPolicy(max_attempts=1)


def auth(key: str):
    return (("authorization", f"Bearer {key}"),)


async def open_session(stub, key: str):
    call = stub.Session(metadata=auth(key))
    await call.write(pb.ClientMessage(open=pb.Open()))
    return call, await call.read()


async def test_streams_per_tenant_are_capped(cluster, tenant_keys):
    path, key_a, key_b = tenant_keys
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path, "max_streams_per_tenant": 2})
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        idle = [await open_session(stub, key_a) for _ in range(2)]  # streams that never send again
        assert all(first.WhichOneof("kind") == "opened" for _, first in idle)
        third = stub.Session(metadata=auth(key_a))
        await third.write(pb.ClientMessage(open=pb.Open()))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await third.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in err.value.details()
        other, first = await open_session(stub, key_b)  # another tenant is not affected
        assert first.WhichOneof("kind") == "opened"
        for call, _ in (*idle, (other, None)):
            call.cancel()
    async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as a:  # slots come back
        assert await a.complete_text("x", max_tokens=1)


async def test_sessions_per_tenant_are_capped(cluster, tenant_keys):
    path, key_a, key_b = tenant_keys
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path, "max_sessions_per_tenant": 3})
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        call = stub.Session(metadata=auth(key_a))
        replies = []
        for _ in range(4):  # each Open without an id makes a new session
            await call.write(pb.ClientMessage(open=pb.Open()))
            replies.append(await call.read())
        assert [r.WhichOneof("kind") for r in replies] == ["opened", "opened", "opened", "error"]
        assert replies[-1].error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        call.cancel()
        other, first = await open_session(stub, key_b)
        assert first.WhichOneof("kind") == "opened"
        other.cancel()


async def test_resumes_per_tenant_are_capped(cluster, tenant_keys):
    path, key_a, _ = tenant_keys
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path, "max_resumes_per_tenant": 2})
    async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as a:
        stream = a.complete("long", max_tokens=LONG, request_id="followed")
        await stream.__anext__()
        followers = [a.resume("followed", 0) for _ in range(2)]
        for follower in followers:
            await asyncio.wait_for(follower.__anext__(), 10)  # each now blocks following the live journal
        with pytest.raises(ResourceExhausted, match="limit"):
            await asyncio.wait_for(a.resume("followed", 0).__anext__(), 10)
        await a.interrupt("followed")
        for s in (stream, *followers):
            await s.aclose()


async def test_interrupt_resume_and_open_are_rate_limited(cluster, tenant_keys):
    path, key_a, key_b = tenant_keys
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path, "rate_limit_per_s": 2})
    async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as a:
        outcomes = await asyncio.gather(*(a.interrupt(f"unknown-{i}") for i in range(8)), return_exceptions=True)
        assert any(isinstance(o, ResourceExhausted) for o in outcomes)
        assert all(isinstance(o, (ResourceExhausted, NotFound)) for o in outcomes)
        resumes = await asyncio.gather(*(_drain(a.resume(f"unknown-{i}", 0)) for i in range(8)),
                                       return_exceptions=True)
        assert any(isinstance(o, ResourceExhausted) for o in resumes)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        await asyncio.sleep(1.1)  # a fresh rate window
        call = flint_pb2_grpc.FlintStub(channel).Session(metadata=auth(key_b))
        kinds = []
        for _ in range(6):
            await call.write(pb.ClientMessage(open=pb.Open()))
            reply = await call.read()
            kinds.append(reply.WhichOneof("kind") if reply.WhichOneof("kind") == "opened" else reply.error.code)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] in kinds
        call.cancel()


async def _drain(stream):
    return [m async for m in stream]


async def test_worker_heartbeat_has_its_own_redis_connection(cluster):
    worker = await cluster.add_worker("w1")
    assert worker._liveness._redis is not worker._redis
    assert worker._liveness._redis.connection_pool is not worker._redis.connection_pool


async def test_oversized_prompt_is_refused_before_any_tokenization_or_redis_write(cluster, caplog):
    import logging

    import redis.asyncio as aioredis

    from flint.errors import InvalidArgument

    _, engine = await cluster.add_replica("r1", max_context_tokens=1024)
    worker = await cluster.add_worker("w1")
    redis = aioredis.Redis.from_url(cluster.redis_url)
    tokenized = []
    original = engine.engine.tokenizer.encode
    engine.engine.tokenizer.encode = lambda *a, **k: tokenized.append(1) or original(*a, **k)
    try:
        async with FlintClient(worker.address, retry=NO_RETRY) as client:
            with pytest.raises(InvalidArgument, match="context"):
                await client.complete_text("x = 1\n" * 100_000, max_tokens=2, request_id="too-big")
        assert not tokenized, "the replica tokenized a prompt the front-end could have refused by its size"
        assert [k async for k in redis.scan_iter(match=f"{cluster.key_prefix}:*too-big*")] == []
    finally:
        engine.engine.tokenizer.encode = original
        await redis.aclose()


async def test_journal_holds_a_request_only_once_the_engine_accepted_it(cluster):
    import redis.asyncio as aioredis

    from flint.errors import InvalidArgument

    await cluster.add_replica("r1", max_context_tokens=1024)
    worker = await cluster.add_worker("w1")
    redis = aioredis.Redis.from_url(cluster.redis_url)
    try:
        async with FlintClient(worker.address, retry=NO_RETRY) as client:
            # Small enough in bytes to pass the front-end's bound, too many tokens for the engine.
            with pytest.raises(InvalidArgument):
                await client.complete_text("é" * 3000, max_tokens=2, request_id="refused-by-engine")
            journal = [k async for k in redis.scan_iter(match=f"{cluster.key_prefix}:journal:*refused-by-engine*")]
            assert journal == [], "a request the engine refused left a journal in Redis"
            assert await client.complete_text("fine", max_tokens=2, request_id="accepted-one")
            assert [k async for k in redis.scan_iter(match=f"{cluster.key_prefix}:journal:*accepted-one*")]
    finally:
        await redis.aclose()


async def test_model_name_is_bounded_and_not_echoed_whole(cluster):
    from flint.errors import InvalidArgument

    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    async with FlintClient(worker.address, retry=NO_RETRY) as client:
        with pytest.raises(InvalidArgument) as err:
            await client.complete_text("x", max_tokens=1, model="m" * 100_000)
        assert len(err.value.message) < 400
        with pytest.raises(NotFound) as err:
            await client.complete_text("x", max_tokens=1, model="n" * 200)
        assert len(err.value.message) < 400


async def test_one_tenants_slow_preparations_do_not_queue_another_tenants_request(cluster):
    """Preparation (tokenization) runs on a bounded pool served round-robin by tenant: the victim's request waits
    for at most one turn of the hostile tenant, not for all the hostile ones queued before it."""
    import threading
    import time

    from flint.internal.v1 import engine_pb2 as ipb
    from flint.security.internal import EngineClient, resolve_token

    server, engine = await cluster.add_replica("r1")
    original = engine.engine.prepare
    cpu = threading.Lock()  # one CPU: preparations that overlap take turns on it
    order = []

    def prepare(req):
        with cpu:
            order.append(req.cache_namespace)
            if req.cache_namespace == "hostile":
                time.sleep(0.5)  # a huge prompt's tokenization
            return original(req)

    engine.engine.prepare = prepare
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            client = EngineClient(channel, resolve_token())

            async def generate(namespace: str, i: int):
                request = ipb.GenerateRequest(request_id=f"{namespace}-{i}", prefix="x", cache_namespace=namespace,
                                              sampling=ipb.SamplingParams(max_tokens=1))
                return [e async for e in client.Generate(request)]

            hostile = [asyncio.ensure_future(generate("hostile", i)) for i in range(4)]
            await asyncio.sleep(0.2)  # all four hostile ones are queued (or running) first
            await generate("victim", 0)
            await asyncio.gather(*hostile)
    finally:
        engine.engine.prepare = original
    # At most the hostile preparation running when it arrived, then one more (the hostile tenant's turn came
    # first); without the pool it waited behind all four.
    assert order.index("victim") <= 2, f"the victim was prepared after {order.index('victim')} hostile requests"


async def test_an_idle_session_stream_ends_deadline_exceeded_and_frees_its_stream_slot(cluster, tenant_keys):
    path, key_a, _ = tenant_keys
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path, "max_streams_per_tenant": 1,
                                                      "session_idle_timeout_s": 0.5})
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        idle, first = await open_session(stub, key_a)
        assert first.WhichOneof("kind") == "opened"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(10):
                while await idle.read() is not grpc.aio.EOF:
                    pass
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "session_idle_timeout_s" in err.value.details()

        busy, first = await open_session(stub, key_a)  # the tenant's only stream slot is free again
        assert first.WhichOneof("kind") == "opened"
        await busy.write(pb.ClientMessage(complete=pb.CompleteRequest(prefix="long", sampling=pb.Sampling(
            max_tokens=LONG))))
        loop = asyncio.get_running_loop()
        until = loop.time() + 2.0  # 4 idle timeouts: a stream whose request runs is not idle
        while loop.time() < until:
            message = await asyncio.wait_for(busy.read(), 10)
            assert message is not grpc.aio.EOF and message.WhichOneof("kind") in ("accepted", "delta")
        busy.cancel()


async def test_a_client_session_ended_as_idle_opens_a_new_stream_on_its_next_call(cluster, tenant_keys):
    path, key_a, _ = tenant_keys
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path, "session_idle_timeout_s": 0.3})
    async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as client:
        async with client.session() as session:
            session_id = session.session_id
            await asyncio.sleep(1.5)  # the front-end ends the idle stream
            messages = [m async for m in session.complete("x = ", max_tokens=2)]
            assert messages[-1].WhichOneof("kind") == "final"
            assert session.session_id == session_id


async def test_a_replica_saturated_by_one_tenant_still_takes_another_tenants_request(cluster, tenant_keys):
    """Saturation refusals (queue at admission.max_waiting) skip a tenant below its fair share, at the front-end
    and at the replica; the engine then gives it a batch slot at the expense of the tenant over its share."""
    path, key_a, key_b = tenant_keys
    _, engine = await cluster.add_replica("r1", admission={"max_waiting": 2}, max_batch_size=2)
    worker = await cluster.add_worker("w1", security={"api_keys_file": path}, admission={"max_waiting": 2})
    async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as a, \
            FlintClient(worker.address, api_key=key_b, retry=NO_RETRY) as b:
        hogs = [a.complete(f"hog {i}", max_tokens=LONG) for i in range(4)]
        for hog in hogs:
            await asyncio.wait_for(hog.__anext__(), 10)
        await eventually(lambda: (engine.load().running, engine.load().waiting) == (2, 2))   # 2 of 2 may wait
        await asyncio.sleep(0.6)                                         # the registry shows it (0.2 s beats)
        with pytest.raises(ResourceExhausted, match="saturated"):
            await a.complete_text("one more", max_tokens=2)
        assert await asyncio.wait_for(b.complete_text("victim", max_tokens=2), 20)
        for hog in hogs:
            await hog.aclose()
