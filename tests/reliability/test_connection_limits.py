"""The public server's connection limits and the `liveness` / `buffers` config tables.

A connection left with no call open for `liveness.max_connection_idle_s` is closed by the server (the
client's channel drops to IDLE and reconnects on its next call); the tables refuse unknown keys and
values that are not positive.
"""


import asyncio

import grpc
import pytest

from rel_support import eventually
from flint.config import FrontendConfig, ServeConfig
from flint.frontend.liveness import LivenessConfig, engine_call_timeout_s, server_options
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc


async def test_an_idle_connection_is_closed_by_the_server_and_the_client_reconnects(cluster):
    await cluster.add_replica()
    worker = await cluster.add_worker("idle", liveness={"max_connection_idle_s": 0.5})
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Interrupt(pb.InterruptRequest(request_id="nobody"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert channel.get_state() == grpc.ChannelConnectivity.READY
        await eventually(lambda: channel.get_state() == grpc.ChannelConnectivity.IDLE, timeout_s=10)
        messages = [m async for m in stub.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=2)))]
        assert messages[-1].final.completion_tokens == 2


def test_public_server_options_carry_the_configured_limits():
    options = dict(server_options(LivenessConfig(keepalive_time_s=20, keepalive_timeout_s=5, max_connection_age_s=60,
                                                 permit_keepalive_without_calls=False)))
    assert options["grpc.keepalive_time_ms"] == 20_000
    assert options["grpc.keepalive_timeout_ms"] == options["grpc.http2.ping_timeout_ms"] == 5_000
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.keepalive_permit_without_calls"] == 0


def test_the_engine_call_deadline_follows_the_requests_time_budget():
    cfg = LivenessConfig(engine_call_timeout_s=100, engine_stall_s=1, engine_probe_timeout_s=1)
    assert engine_call_timeout_s(cfg, 0) == 100
    assert engine_call_timeout_s(cfg, 5_000) == 7
    assert engine_call_timeout_s(cfg, 500_000) == 100


@pytest.mark.parametrize("table, values, message", [
    ("liveness", {"keepalive_seconds": 1}, "unknown liveness key"),
    ("liveness", {"engine_stall_s": 0}, "liveness.engine_stall_s must be a number of seconds > 0"),
    ("liveness", {"permit_keepalive_without_calls": "yes"}, "must be true or false"),
    ("buffers", {"max_buffered_bytes_per_stream": 10}, "buffers.max_buffered_bytes_per_stream must be an integer"),
    ("buffers", {"max_bytes": 1 << 20}, "unknown buffers key"),
    ("buffers", {"queued_deltas_per_request": 0}, "buffers.queued_deltas_per_request must be an integer >= 1"),
])
def test_liveness_and_buffers_tables_say_what_to_change(table, values, message):
    for config in (FrontendConfig, ServeConfig):
        kwargs = {"redis_url": "redis://x"} if config is FrontendConfig else {}
        with pytest.raises(ValueError, match=message):
            config(**kwargs, **{table: values})


CLIENT = """
import asyncio, sys
import asyncio

import grpc
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc

async def main():
    async with grpc.aio.insecure_channel(sys.argv[1]) as channel:
        call = flint_pb2_grpc.FlintStub(channel).Complete(pb.CompleteRequest(
            request_id="stopped-client", prefix="p", sampling=pb.Sampling(max_tokens=8000)))
        async for message in call:
            if message.WhichOneof("kind") == "delta":
                print("streaming", flush=True)
                await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_client_that_stops_answering_is_dropped_by_keepalive_and_its_request_freed(cluster):
    """A client process stopped (SIGSTOP) mid-stream answers no ping: the server closes its connection after
    keepalive_time_s + keepalive_timeout_s, which cancels the request and frees the engine."""
    import os
    import signal
    import subprocess
    import sys

    _, engine = await cluster.add_replica()
    worker = await cluster.add_worker("keepalive", liveness={"keepalive_time_s": 0.5, "keepalive_timeout_s": 0.5})
    client = subprocess.Popen([sys.executable, "-c", CLIENT, worker.address], stdout=subprocess.PIPE, text=True)
    try:
        assert await asyncio.wait_for(asyncio.to_thread(client.stdout.readline), 60) == "streaming\n"
        assert engine.load().running == 1
        os.kill(client.pid, signal.SIGSTOP)
        await eventually(lambda: engine.load().running == 0 and engine.load().waiting == 0, timeout_s=15)
        record = await eventually(lambda: worker.servicer.store.get_request("stopped-client"))
        assert record.state != "running" and worker.servicer.buffers.refused == 0   # not ended by a buffer cap
    finally:
        os.kill(client.pid, signal.SIGCONT)
        client.kill()
        client.wait()
