"""flint.bench.floor's variants of the internal hop carry a replica's stream intact: through a bare proxy with
channel options over a unix socket, through the multiplexed bidi stream, and through the raw framed connection,
a request gets the events a direct call gets (real gRPC on loopback, a stand-in engine in a real EngineServicer)."""

import asyncio
import json

import grpc
import pytest

from flint.admission import AdmissionConfig
from flint.bench import bare_proxy, floor
from flint.bench.relay import PacedEngine
from flint.internal.v1 import engine_pb2
from flint.replica.server import EngineServicer
from flint.security.internal import EngineClient, ensure_process_token


@pytest.fixture
async def replica(tmp_path):
    token = ensure_process_token()   # the proxy processes read it from the environment
    servicer = EngineServicer(PacedEngine(interval_s=0.01), "floor-test", asyncio.Event(), AdmissionConfig())
    server, address = await floor.floor_server(servicer, token, str(tmp_path / "grpc.sock"))
    raw = await floor.raw_server(servicer, str(tmp_path / "raw.sock"))
    try:
        yield token, address, tmp_path
    finally:
        raw.close()
        await server.stop(0)


async def events(call) -> list[tuple]:
    """The stream as the front-end reads it: deltas one by one however the replica batched them, and the
    Final without its timings."""
    out = []
    async for m in call:
        kind = m.WhichOneof("kind")
        if kind == "started":
            out.append(("started", m.started.prompt_tokens))
        elif kind in ("delta", "deltas"):
            out += [("delta", d.text, d.token_count) for d in (m.deltas.items if kind == "deltas" else [m.delta])]
        else:
            out.append(("final", m.final.finish_reason, m.final.prompt_tokens, m.final.completion_tokens))
    return out


def request(i: int) -> engine_pb2.GenerateRequest:
    return engine_pb2.GenerateRequest(request_id=f"floor-{i}", prefix="def f():",
                                      sampling=engine_pb2.SamplingParams(max_tokens=2 + i))   # i + 2 deltas


@pytest.mark.parametrize("target, args, module", [
    ("unix:{dir}/grpc.sock", ["--channel-options", json.dumps([["grpc.http2.bdp_probe", 0]]), "--timeout-s", "30",
                              "--event-loop", "uvloop"], "flint.bench.bare_proxy"),
    ("{address}", [], "flint.bench.floor"),                      # one bidi stream carrying every request
    ("raw:unix:{dir}/raw.sock", [], "flint.bench.floor"),        # no gRPC on the hop
], ids=["bare-options-unix", "mux", "raw"])
async def test_each_variant_delivers_what_a_direct_call_does(replica, target, args, module):
    token, address, tmp = replica
    proc, proxy_address = bare_proxy.start(target.format(dir=tmp, address=address), *args, module=module)
    try:
        async with grpc.aio.insecure_channel(address) as direct_channel, \
                grpc.aio.insecure_channel(proxy_address) as proxy_channel:
            direct = EngineClient(direct_channel, token)
            proxy = bare_proxy.stub(proxy_channel)
            want = [await events(direct.Generate(request(i))) for i in range(4)]
            assert [e[0] for e in want[1]] == ["started", "delta", "delta", "delta", "final"]
            # at once, each stream 10 ms a delta so they overlap: the multiplexed variants keep them apart
            got = await asyncio.wait_for(asyncio.gather(*(events(proxy(request(i))) for i in range(4))), 30)
            assert got == want
    finally:
        proc.terminate()
        proc.wait(15)
