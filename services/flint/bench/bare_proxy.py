"""`python -m flint.bench.bare_proxy --target HOST:PORT`: the floor under the front-end's added TTFT.

A process with no flint code on its path: one grpc.aio server whose one
method forwards the request bytes to an engine replica's internal
`Generate` (over one channel opened at start, the internal token added as
metadata) and streams the replica's messages back as they come, unparsed.
It makes the same two Python gRPC hops as a front-end worker (client to
worker, worker to replica) and nothing else: no auth, admission, routing,
Redis, owner or re-encoding. The relay benches time one-token requests
through it beside the ones through a worker (`bare_grpc_proxy_added_ttft_ms`),
so what a worker adds above it is flint's own cost, and what the proxy adds
over a direct call is grpc.aio's, asyncio's and the loopback's.

Prints `{"event": "listening", "port": N}` once it serves; runs until SIGTERM.
`--channel-options` (a JSON list of [name, value] pairs for the channel to the
replica), `--timeout-s` (a deadline on each internal call, as a worker sets
one) and `--event-loop` let flint.bench.floor compare variants of this hop;
without them it is the plain proxy `flint bench cluster` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

import grpc

METHOD = "/flint.bench.BareProxy/Generate"
ENGINE_GENERATE = "/flint.internal.v1.Engine/Generate"


def _same(data: bytes) -> bytes:
    return data


async def serve(target: str, token: str, *, channel_options=(), timeout_s: float | None = None) -> None:
    from flint.security.internal import METADATA_KEY

    channel = grpc.aio.insecure_channel(target, options=list(channel_options))
    generate = channel.unary_stream(ENGINE_GENERATE, request_serializer=_same, response_deserializer=_same)
    metadata = ((METADATA_KEY, token),)

    async def forward(request: bytes, context):
        async for message in generate(request, metadata=metadata, timeout=timeout_s):
            yield message

    await serve_method(forward)
    await channel.close()


async def serve_method(forward) -> None:
    """Serve `forward` (bytes in, a stream of bytes out) as this proxy's one method on 127.0.0.1 until SIGTERM."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("flint.bench.BareProxy", {
        "Generate": grpc.unary_stream_rpc_method_handler(forward, request_deserializer=_same,
                                                         response_serializer=_same)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"event": "listening", "port": port}), flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


def start(target: str, *args: str, module: str = "flint.bench.bare_proxy"):
    """Start the proxy process (the internal token from this process's environment; `args` are more of its
    flags); (process, address)."""
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", module, "--target", target, *args],
                            stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or "{}")
    if ready.get("event") != "listening":
        proc.kill()
        raise RuntimeError("the bare gRPC proxy did not start")
    return proc, f"127.0.0.1:{ready['port']}"


def stub(channel: grpc.aio.Channel):
    """The client side: call(GenerateRequest) streams the replica's GenerateEvents through the proxy."""
    from flint.internal.v1 import engine_pb2

    return channel.unary_stream(METHOD, request_serializer=engine_pb2.GenerateRequest.SerializeToString,
                                response_deserializer=engine_pb2.GenerateEvent.FromString)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flint.bench.bare_proxy", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    from flint.security.internal import require_token

    run(serve(args.target, require_token(), channel_options=[tuple(o) for o in json.loads(args.channel_options)],
              timeout_s=args.timeout_s), args.event_loop)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="the engine replica's internal address (host:port or unix:PATH)")
    p.add_argument("--channel-options", default="[]", help="JSON list of [name, value] for the channel to it")
    p.add_argument("--timeout-s", type=float, default=None, help="deadline of each internal call")
    p.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")


def run(main, event_loop: str) -> None:
    """As a worker runs (flint.frontend.worker.run), without importing the front-end into this process."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


if __name__ == "__main__":
    sys.exit(main())
