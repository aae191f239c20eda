"""The internal engine API: only front-ends holding the deployment's token may call a replica; replicas bind privately.

The replica runs the real engine (rel_support.py); the front-end's output is
checked against the same request run alone (`reference`).
"""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from flint.config import ReplicaConfig, ServeConfig
from flint.errors import InvalidArgument
from flint.internal.v1 import engine_pb2 as ipb
from flint.internal.v1 import engine_pb2_grpc
from flint.security import internal
from flint.client import FlintClient


async def test_replica_answers_only_callers_with_the_internal_token(cluster, reference):
    server, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    request = ipb.GenerateRequest(request_id="stolen", prefix="secret of tenant A", cache_namespace="tenant-a",
                                  sampling=ipb.SamplingParams(max_tokens=4))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = engine_pb2_grpc.EngineStub(channel)
        for metadata in ((), ((internal.METADATA_KEY, "not-the-token-of-this-deployment"),)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [e async for e in stub.Generate(request, metadata=metadata)]
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Load(ipb.LoadRequest(), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert engine.load().running == 0 and engine.load().waiting == 0
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no token
        authorized = internal.EngineClient(channel, internal.resolve_token())
        assert (await authorized.Load(ipb.LoadRequest())).model == engine.model_name
    async with FlintClient(worker.address) as client:  # the front-end holds the token
        assert await client.complete_text("via the front-end", max_tokens=3) == \
            await reference.atext("via the front-end", 3)


async def test_replica_and_worker_refuse_to_start_without_a_token(cluster, monkeypatch):
    monkeypatch.delenv(internal.TOKEN_ENV, raising=False)
    monkeypatch.delenv(internal.TOKEN_FILE_ENV, raising=False)
    with pytest.raises(InvalidArgument, match=internal.TOKEN_ENV):
        await cluster.add_replica("r-open")
    with pytest.raises(InvalidArgument, match=internal.TOKEN_ENV):
        await cluster.add_worker("w-open")


def test_token_comes_from_config_then_file_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(internal.TOKEN_ENV, "from-the-environment-0123456789")
    path = tmp_path / "token"
    path.write_text("from-a-file-0123456789abcdef\n")
    assert internal.resolve_token(token="from-the-config-0123456789") == "from-the-config-0123456789"
    assert internal.resolve_token(token_file=str(path)) == "from-a-file-0123456789abcdef"
    assert internal.resolve_token() == "from-the-environment-0123456789"
    monkeypatch.delenv(internal.TOKEN_ENV)
    monkeypatch.setenv(internal.TOKEN_FILE_ENV, str(path))
    assert internal.resolve_token() == "from-a-file-0123456789abcdef"
    with pytest.raises(InvalidArgument, match="at least 16"):
        internal.resolve_token(token="short")


def test_replicas_never_bind_a_wildcard_address_and_hide_their_token():
    assert ReplicaConfig(redis_url="redis://x").host == "127.0.0.1"
    for wildcard in ("0.0.0.0", "::", "[::]", ""):
        with pytest.raises(InvalidArgument, match="private interface"):
            ReplicaConfig(redis_url="redis://x", host=wildcard)
    assert ReplicaConfig(redis_url="redis://x", host="node").host == "node"  # the node IP Ray reports
    config = ReplicaConfig(redis_url="redis://x", internal_token="a-secret-token-0123456789")
    assert "a-secret-token" not in repr(config)


def test_flint_serve_binds_replicas_privately_whatever_the_public_host():
    from flint.serve import Server

    token = internal.new_token()
    local = Server(ServeConfig(host="0.0.0.0", redis_url="redis://r:6379")).replica_config(token)
    assert local.host == "127.0.0.1" and local.internal_token == token
    cluster = Server(ServeConfig(host="0.0.0.0", redis_url="redis://r:6379", ray_address="10.0.0.5:6379")).replica_config(token)
    assert cluster.host == "node"
