"""Revoking an API key (`flint keys revoke`) ends new calls and open streams within `security.key_recheck_s`.

Real Valkey, real front-end worker and the real engine (rel_support.py).
"""

import asyncio
import logging

import grpc
import pytest
import redis.asyncio as aioredis

from rel_support import eventually
from flint.cli import main as flint_main
from flint.client import FlintClient, RetryPolicy
from flint.errors import Unauthenticated
from flint.security.keystore import add_key_to_file, add_key_to_redis, hash_key, read_key_file
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

RECHECK_S = 0.5
BOUND_S = RECHECK_S * 2 + 2.0  # the documented bound (recheck_s), plus slack for a loaded test machine
LONG = 8000
NO_RETRY = RetryPolicy(max_attempts=1)


async def _unauthenticated_within(client, bound_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    while True:
        try:
            await client.complete_text("x", max_tokens=1)
        except Unauthenticated:
            return
        assert loop.time() < deadline, f"the revoked key still worked after {bound_s} s"
        await asyncio.sleep(0.05)


def test_flint_keys_revoke_removes_a_key_or_a_tenants_keys_from_the_file(tmp_path, capsys):
    path = tmp_path / "keys.json"
    a1, a2, b = add_key_to_file(path, "tenant-a"), add_key_to_file(path, "tenant-a"), add_key_to_file(path, "tenant-b")
    assert flint_main(["keys", "revoke", "--key", a1, "--file", str(path)]) == 0
    assert set(read_key_file(path)) == {hash_key(a2), hash_key(b)}
    assert flint_main(["keys", "revoke", "--tenant", "tenant-a", "--file", str(path)]) == 0
    assert read_key_file(path) == {hash_key(b): "tenant-b"}
    assert flint_main(["keys", "revoke", "--key", "flk_unknown", "--file", str(path)]) == 1
    assert "no such key" in capsys.readouterr().err


async def test_revoking_a_file_key_ends_new_calls_and_open_streams_within_the_bound(cluster, tmp_path):
    path = tmp_path / "keys.json"
    key, other = add_key_to_file(path, "tenant-a"), add_key_to_file(path, "tenant-b")
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": str(path), "key_recheck_s": RECHECK_S})
    metadata = (("authorization", f"Bearer {key}"),)
    async with FlintClient(worker.address, api_key=key, retry=NO_RETRY) as client, \
            FlintClient(worker.address, api_key=other, retry=NO_RETRY) as bystander, \
            grpc.aio.insecure_channel(worker.address) as channel:
        assert await client.complete_text("before", max_tokens=2)
        stream = client.complete("long", max_tokens=LONG)
        assert (await stream.__anext__()).WhichOneof("kind") == "accepted"
        session = flint_pb2_grpc.FlintStub(channel).Session(metadata=metadata)
        await session.write(pb.ClientMessage(open=pb.Open()))
        assert (await session.read()).WhichOneof("kind") == "opened"  # then it sends nothing more
        assert flint_main(["keys", "revoke", "--key", key, "--file", str(path)]) == 0
        await _unauthenticated_within(client, BOUND_S)
        with pytest.raises(Unauthenticated):
            async with asyncio.timeout(BOUND_S):
                async for _ in stream:
                    pass
        async with asyncio.timeout(BOUND_S):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while True:
                    message = await session.read()
                    assert message is not grpc.aio.EOF, "the session ended without a status"
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert await bystander.complete_text("other tenant", max_tokens=2)  # other keys keep working


async def test_revoking_a_redis_key_takes_effect_within_the_bound(cluster):
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_in_redis": True, "key_recheck_s": RECHECK_S})
    redis = aioredis.Redis.from_url(cluster.redis_url)
    try:
        key = await add_key_to_redis(redis, cluster.key_prefix, "tenant-r")
    finally:
        await redis.aclose()
    async with FlintClient(worker.address, api_key=key, retry=NO_RETRY) as client:
        assert await client.complete_text("before", max_tokens=2)
        stream = client.complete("long", max_tokens=LONG)
        await stream.__anext__()
        assert await asyncio.to_thread(flint_main, ["keys", "revoke", "--key", key, "--redis-url",
                                                    cluster.redis_url, "--key-prefix", cluster.key_prefix]) == 0
        await _unauthenticated_within(client, BOUND_S)
        with pytest.raises(Unauthenticated):
            async with asyncio.timeout(BOUND_S):
                async for _ in stream:
                    pass


async def test_client_refuses_to_send_a_key_in_plaintext_off_loopback_and_warns_on_loopback(caplog):
    from flint.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="allow_plaintext_key"):
        FlintClient("10.1.2.3:50051", api_key="flk_x")
    with pytest.raises(InvalidArgument, match="allow_plaintext_key"):
        FlintClient(["127.0.0.1:50051", "flint.example.com:50051"], api_key="flk_x")
    caplog.set_level(logging.WARNING)
    for address, allow in (("10.1.2.3:50051", True), ("127.0.0.1:50051", False), ("localhost:50051", False)):
        await FlintClient(address, api_key="flk_x", allow_plaintext_key=allow).close()
    assert caplog.text.count("in plaintext") == 3
    caplog.clear()
    await FlintClient("10.1.2.3:50051").close()  # no key, nothing to protect
    assert "plaintext" not in caplog.text


async def test_server_refuses_keys_without_tls_off_loopback_and_warns_on_loopback(cluster, tmp_path, caplog):
    from flint.errors import InvalidArgument
    from flint.frontend.server import FrontendWorker

    path = tmp_path / "keys.json"
    add_key_to_file(path, "tenant-a")
    public = FrontendWorker(cluster.frontend_config("w-public", host="0.0.0.0",
                                                    security={"api_keys_file": str(path)}))
    with pytest.raises(InvalidArgument, match="allow_plaintext_keys"):
        await public.start()  # refused before it binds anything
    caplog.set_level(logging.WARNING)
    await cluster.add_worker("w-local", security={"api_keys_file": str(path)})
    assert "without TLS" in caplog.text


# A client that announces a small HTTP/2 window and does not read: the server's writes wait for it after a
# few KB, so the handler is parked inside gRPC's write (not in flint's stream loop) when the key is revoked.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
HELD_WHILE_THE_WRITE_WAITS = 2048


async def test_a_revoked_stream_whose_write_waits_for_an_unread_client_ends_unauthenticated_and_frees_the_engine(
        cluster, tmp_path):
    """The revocation's cancel lands inside gRPC's write, which ends the handler without a status (the
    clean-clone CI failure of the test above: under load its unread stream was mid-write); the call must
    still end UNAUTHENTICATED."""
    path = tmp_path / "keys.json"
    key = add_key_to_file(path, "tenant-a")
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": str(path), "key_recheck_s": RECHECK_S})
    budget = worker.servicer.buffers
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(worker.address, options=SMALL_WINDOW) as channel:
        stream = flint_pb2_grpc.FlintStub(channel).Complete(
            pb.CompleteRequest(prefix="unread", sampling=pb.Sampling(max_tokens=LONG)), metadata=metadata)
        assert (await stream.read()).WhichOneof("kind") == "accepted"
        # Nobody reads: the window fills and the handler's write waits for the client. The owner then holds the
        # new text back; had the writer taken anything meanwhile, the held text would have gone out with it.
        await eventually(lambda: budget.bytes >= HELD_WHILE_THE_WRITE_WAITS, timeout_s=30)
        assert flint_main(["keys", "revoke", "--key", key, "--file", str(path)]) == 0
        await eventually(lambda: engine.load().running == 0 and engine.load().waiting == 0, timeout_s=BOUND_S)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with asyncio.timeout(BOUND_S):
                while await stream.read() is not grpc.aio.EOF:   # what was sent before, then the status
                    pass
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
        assert "revoked" in err.value.details()
    # The handler is gone too: nothing held for the stream, the tenant's stream slot free.
    await eventually(lambda: budget.bytes == 0 and worker.servicer.guard.caps.held("stream", "tenant-a") == 0)
