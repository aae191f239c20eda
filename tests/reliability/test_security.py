"""Security: API keys per tenant, tenant-bound ids and caches, rate limits, size limits, TLS and mTLS.

Replicas run the real engine (rel_support.py); outputs are checked against
the same request run alone (`reference`).
"""

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flint.client import ClientTLS, FlintClient, RetryPolicy
from flint.errors import InvalidArgument, NotFound, ResourceExhausted, Unauthenticated, Unavailable
from flint.security.keystore import add_key_to_file, add_key_to_redis, read_key_file
from flint.v1 import flint_pb2 as pb
from rel_support import eventually
from tls_certs import write_tls_files

LONG = 8000  # tokens: a stream that keeps running until the test ends it


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys.json"
    return path, add_key_to_file(path, "tenant-a"), add_key_to_file(path, "tenant-b")


async def test_keys_are_stored_hashed_only(key_file):
    path, key_a, key_b = key_file
    text = path.read_text()
    assert key_a not in text and key_b not in text
    assert sorted(read_key_file(path).values()) == ["tenant-a", "tenant-b"]


async def test_calls_without_a_valid_key_are_unauthenticated_but_health_stays_open(cluster, key_file, reference):
    path, key_a, _ = key_file
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": str(path)})
    for api_key in ("", "flk_not-a-real-key"):
        async with FlintClient(worker.address, api_key=api_key) as client:
            with pytest.raises(Unauthenticated, match="API key"):
                await client.complete_text("x", max_tokens=2)
            with pytest.raises(Unauthenticated):
                await client.interrupt("r-anything")
    async with FlintClient(worker.address, api_key=key_a) as client:
        assert await client.complete_text("x", max_tokens=2) == await reference.atext("x", 2)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_keys_in_redis_are_honoured(cluster, valkey_url, reference):
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_in_redis": True})
    redis = aioredis.Redis.from_url(valkey_url)
    try:
        key = await add_key_to_redis(redis, cluster.key_prefix, "tenant-r")
        assert key.encode() not in b"".join(await redis.hkeys(f"{cluster.key_prefix}:apikeys"))
    finally:
        await redis.aclose()
    async with FlintClient(worker.address, api_key=key) as client:
        assert await client.complete_text("y", max_tokens=3) == await reference.atext("y", 3)


async def test_tenant_cannot_touch_another_tenants_requests_or_sessions(cluster, key_file):
    path, key_a, key_b = key_file
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": str(path)})
    secret = "secret code of A = 1\n" * 6  # several KV blocks: a prefix the cache can serve
    async with FlintClient(worker.address, api_key=key_a) as a, FlintClient(worker.address, api_key=key_b) as b:
        stream = a.complete(secret, max_tokens=LONG, request_id="a-req-1")
        accepted = await stream.__anext__()
        assert accepted.accepted.request_id == "a-req-1"
        with pytest.raises(NotFound):
            await b.interrupt("a-req-1")
        with pytest.raises(NotFound):
            [m async for m in b.resume("a-req-1", 0)]
        ack = await a.interrupt("a-req-1")
        assert ack.was_running
        await stream.aclose()
        await eventually(lambda: engine.load().running == 0)  # a-req-1 left its prompt in A's prefix cache
        # The same prompt from two tenants runs in two prefix-cache namespaces: no cross-tenant cache hits,
        # while the tenant that sent it first is served from the cache.
        b_final = await final_of(b.complete(secret, max_tokens=2, request_id="b-req-1"))
        a_final = await final_of(a.complete(secret, max_tokens=2, request_id="a-req-2"))
    assert b_final.cached_prompt_tokens == 0
    assert a_final.cached_prompt_tokens >= 32 and a_final.prompt_tokens == b_final.prompt_tokens


async def final_of(stream):
    return [m async for m in stream][-1].final


async def test_rate_limit_per_tenant_answers_resource_exhausted_with_delay(cluster, key_file):
    path, key_a, key_b = key_file
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": str(path), "rate_limit_per_s": 2})
    async with FlintClient(worker.address, api_key=key_a, retry=_no_retry()) as a, \
            FlintClient(worker.address, api_key=key_b, retry=_no_retry()) as b:
        outcomes = await asyncio.gather(*(a.complete_text("q", max_tokens=1) for _ in range(6)),
                                        return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
        assert refused and all(0 < e.retry_after_ms <= 1000 and "rate limit" in e.message for e in refused)
        assert all(isinstance(o, (str, ResourceExhausted)) for o in outcomes)
        assert await b.complete_text("q", max_tokens=1)  # another tenant's budget is its own


def _no_retry():
    from flint.client import RetryPolicy

    return RetryPolicy(max_attempts=1)


async def test_size_limits_give_invalid_argument_naming_the_limit(cluster, reference):
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", max_message_bytes=64 * 1024, security={
        "max_prompt_bytes": 1000, "max_context_files": 2, "max_context_file_bytes": 300})
    async with FlintClient(worker.address) as client:
        with pytest.raises(InvalidArgument, match="at most 2"):
            await client.complete_text("x", context=[("a.py", "1"), ("b.py", "2"), ("c.py", "3")])
        with pytest.raises(InvalidArgument, match="at most 300 bytes per file"):
            await client.complete_text("x", context=[("a.py", "z" * 400)])
        with pytest.raises(InvalidArgument, match="at most 1000"):
            await client.complete_text("p" * 1200)
        with pytest.raises(ResourceExhausted):  # over max_message_bytes: refused by gRPC itself
            await client.complete_text("p" * 70_000)
        assert await client.complete_text("still serving", max_tokens=2) == await reference.atext("still serving", 2)


async def test_concurrent_calls_per_connection_are_capped_with_resource_exhausted(cluster):
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"max_streams_per_connection": 2})
    async with FlintClient(worker.address, retry=RetryPolicy(max_attempts=1)) as client:
        streams = [client.complete("s", max_tokens=LONG) for _ in range(2)]
        for stream in streams:
            await asyncio.wait_for(stream.__anext__(), 10)
        with pytest.raises(ResourceExhausted, match="max_streams_per_connection") as err:
            await asyncio.wait_for(client.complete_text("t", max_tokens=1), 10)
        assert err.value.retry_after_ms > 0
        # Another connection is not affected (its own subchannel pool, so its own TCP connection).
        async with grpc.aio.insecure_channel(worker.address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            rpc = ch.unary_stream("/flint.v1.Flint/Complete", request_serializer=pb.CompleteRequest.SerializeToString,
                                  response_deserializer=pb.ServerMessage.FromString)
            other = [m async for m in rpc(pb.CompleteRequest(prefix="t", sampling=pb.Sampling(max_tokens=1)),
                                          timeout=10)]
            assert other[-1].WhichOneof("kind") == "final"
        await streams[0].aclose()  # frees a slot (once the server has seen the cancel)

        async def third_call_runs():
            try:
                return await client.complete_text("t", max_tokens=1) is not None
            except ResourceExhausted:
                return False

        await eventually(third_call_runs)
        await streams[1].aclose()


async def test_a_session_flood_on_one_fresh_connection_is_answered_resource_exhausted_not_internal(cluster, key_file):
    """The hostile soak's Session flood: 300 Opens at once on one connection got 212 INTERNAL and 1,567
    UNAVAILABLE (HTTP/2 resets of streams over the connection's cap). Each call over the cap must get
    RESOURCE_EXHAUSTED with a retry delay instead."""
    from flint.grpc_status import retry_after_ms_of

    path, key_a, _ = key_file
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": str(path), "max_streams_per_connection": 16})
    outcomes, calls = {}, []

    async def one(stub, i):
        call = stub.Session(metadata=(("authorization", f"Bearer {key_a}"),), timeout=10)
        calls.append(call)
        try:
            await call.write(pb.ClientMessage(open=pb.Open(client=f"flood-{i}")))
            reply = await call.read()
            kind = reply.WhichOneof("kind") if reply is not grpc.aio.EOF else "eof"
        except grpc.aio.AioRpcError as exc:
            kind = exc.code().name
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert retry_after_ms_of(exc.trailing_metadata() or ()) > 0
        except grpc.aio.UsageError:  # writing to a call the server already ended
            kind = (await call.code()).name
        outcomes[kind] = outcomes.get(kind, 0) + 1

    async with grpc.aio.insecure_channel(worker.address) as channel:
        from flint.v1 import flint_pb2_grpc

        stub = flint_pb2_grpc.FlintStub(channel)
        await asyncio.wait_for(asyncio.gather(*(one(stub, i) for i in range(200))), 60)
        for call in calls:
            call.cancel()
    assert outcomes == {"opened": 16, "RESOURCE_EXHAUSTED": 184}


async def test_tls_and_mutual_tls(cluster, tmp_path, reference):
    files = write_tls_files(tmp_path)
    await cluster.add_replica("r1")
    tls = await cluster.add_worker("w-tls", security={"tls_cert_file": str(files["server_cert"]),
                                                      "tls_key_file": str(files["server_key"])})
    mtls = await cluster.add_worker("w-mtls", security={"tls_cert_file": str(files["server_cert"]),
                                                        "tls_key_file": str(files["server_key"]),
                                                        "tls_client_ca_file": str(files["ca"])})
    ca = files["ca"].read_bytes()
    server_only = ClientTLS(root_certificates=ca, server_name_override="localhost")
    with_cert = ClientTLS(root_certificates=ca, certificate_chain=files["client_cert"].read_bytes(),
                          private_key=files["client_key"].read_bytes(), server_name_override="localhost")
    async with FlintClient(tls.address, tls=server_only) as client:
        assert await client.complete_text("tls", max_tokens=2) == await reference.atext("tls", 2)
    async with FlintClient(tls.address, retry=_no_retry()) as plain:
        with pytest.raises(Unavailable):
            await plain.complete_text("tls", max_tokens=2, timeout_s=5)
    async with FlintClient(mtls.address, tls=server_only, retry=_no_retry()) as no_cert:
        with pytest.raises(Unavailable):
            await no_cert.complete_text("mtls", max_tokens=2, timeout_s=5)
    async with FlintClient(mtls.address, tls=with_cert) as client:
        assert await client.complete_text("mtls", max_tokens=2) == await reference.atext("mtls", 2)


def test_flint_keys_create_prints_the_key_once_and_stores_its_hash(tmp_path, capsys):
    from flint.cli import main
    from flint.security.keystore import hash_key

    path = tmp_path / "keys.json"
    assert main(["keys", "create", "--tenant", "team-x", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    assert read_key_file(path) == {hash_key(key): "team-x"} and key not in path.read_text()
    assert main(["keys", "create", "--tenant", "bad tenant!", "--file", str(path)]) == 1


async def test_flint_complete_sends_the_api_key_from_the_environment(cluster, key_file, monkeypatch, capsys,
                                                                    reference):
    from flint.cli import build_parser
    from flint.cli_requests import run_request

    path, key_a, _ = key_file
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": str(path)})
    args = build_parser().parse_args(["complete", "def cli(", "--max-tokens", "3"])
    monkeypatch.setenv("FLINT_API_KEY", key_a)
    assert await run_request(args, worker.address) == 0
    assert capsys.readouterr().out == await reference.atext("def cli(", 3) + "\n"
    monkeypatch.delenv("FLINT_API_KEY")
    with pytest.raises(Unauthenticated):
        await run_request(args, worker.address)
