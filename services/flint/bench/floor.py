"""The floor under the relay's added TTFT, in variants of the internal hop (front-end worker -> engine replica).

Bench harness only; nothing here is on flint's request path. Each variant is
a proxy process (flint.bench.bare_proxy's method, no flint code on the
request path) in front of one replica's `EngineServicer`; one-token requests
through each and straight to the replica alternate sample by sample (in an
order shuffled every sample), and the figures are per-sample differences, as
in flint.bench.cluster_measure.relay_overhead.

- `call` variants are flint.bench.bare_proxy with channel options, a per-call
  deadline, an event loop and a target (TCP, or `unix:PATH`) of their own;
- `mux` (`python -m flint.bench.floor --target T ...`) is a prototype of ONE
  long-lived bidi stream per (proxy, replica) carrying every request: each
  message is an 8-byte request id then a serialized GenerateRequest; each
  answer the id, a kind byte (event, end, error) and the event's bytes. Its
  replica end (`mux_handler`) runs the same servicer's `Generate` per request.
  The prototype has no cancellation, per-request deadline or flow control.
- `raw` (`--target raw:unix:PATH` or `raw:HOST:PORT`): the same messages,
  length-prefixed, on one plain asyncio connection (`raw_server`): what the hop costs
  with no gRPC on it at all, to size what gRPC itself takes.

`floor_server()` serves the replica's servicer (interceptors and options as
flint.replica.server.ReplicaServer's) plus the mux method, on TCP and a unix
socket, so every variant reaches the same engine through the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import sys
import time

import grpc

from flint.bench import bare_proxy as bare

MUX_SERVICE = "flint.bench.Mux"
MUX_METHOD = f"/{MUX_SERVICE}/Stream"
EVENT, END, ERROR = 0, 1, 2


# -- the replica end ---------------------------------------------------------------------------------

def _run_one(servicer, context, send):
    """A coroutine function (request id, GenerateRequest bytes): runs `servicer.Generate` and `send`s each event,
    then the end (or the error), tagged with the id."""
    from flint.internal.v1 import engine_pb2

    async def one(rid: bytes, body: bytes) -> None:
        try:
            async for event in servicer.Generate(engine_pb2.GenerateRequest.FromString(body), context):
                send(rid + bytes((EVENT,)) + event.SerializeToString())
            send(rid + bytes((END,)))
        except Exception as exc:  # noqa: BLE001 - the request's error goes back on its id
            send(rid + bytes((ERROR,)) + str(exc).encode())

    return one


def mux_handler(servicer):
    """The replica end of the mux stream: every request message runs `servicer.Generate` in a task of its own;
    their events are written back, tagged with the request's id, in the order they come."""

    async def stream(requests, context):
        out: asyncio.Queue = asyncio.Queue()
        running: set[asyncio.Task] = set()
        one = _run_one(servicer, context, out.put_nowait)

        async def read() -> None:
            async for message in requests:
                _spawn(running, one(message[:8], message[8:]))
            out.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (message := await out.get()) is not None:
                yield message
        finally:
            reader.cancel()
            for task in list(running):
                task.cancel()

    return grpc.method_handlers_generic_handler(MUX_SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(
        stream, request_deserializer=bare._same, response_serializer=bare._same)})


def _spawn(running: set, work) -> None:
    task = asyncio.ensure_future(work)
    running.add(task)
    task.add_done_callback(running.discard)


class _NoMetadata:
    """The servicer's view of a call's context in the raw prototype (it reads only the invocation metadata)."""

    def invocation_metadata(self):
        return ()


async def raw_server(servicer, unix_path: str = "") -> asyncio.base_events.Server:
    """The replica end of the raw prototype: the mux's messages, each a 4-byte length then the message, on a plain
    asyncio connection to `unix_path` (or, without it, TCP on 127.0.0.1; asyncio sets TCP_NODELAY); no HTTP/2, no
    gRPC, and no token (a prototype: a real one would need the token in a first message or the socket's mode)."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        running: set[asyncio.Task] = set()
        one = _run_one(servicer, _NoMetadata(), lambda m: writer.write(len(m).to_bytes(4, "big") + m))
        try:
            while True:
                message = await _read_frame(reader)
                _spawn(running, one(message[:8], message[8:]))
        except asyncio.IncompleteReadError:
            pass
        finally:
            for task in list(running):
                task.cancel()
            writer.close()

    if unix_path:
        return await asyncio.start_unix_server(connection, unix_path)
    return await asyncio.start_server(connection, "127.0.0.1", 0)


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    return await reader.readexactly(int.from_bytes(await reader.readexactly(4), "big"))


async def floor_server(servicer, token: str, unix_path: str, *, extra_options=()) -> tuple[grpc.aio.Server, str]:
    """`servicer` (and the mux method) on a server built as a replica builds its own, listening on 127.0.0.1 and
    on `unix_path`; (server, "127.0.0.1:port")."""
    from flint.frontend.liveness import engine_server_options
    from flint.grpc_status import ErrorInterceptor
    from flint.internal.v1 import engine_pb2_grpc
    from flint.security.internal import InternalAuthInterceptor

    server = grpc.aio.server(interceptors=[InternalAuthInterceptor(token), ErrorInterceptor()],
                             options=[("grpc.so_reuseport", 0), *engine_server_options(), *extra_options])
    engine_pb2_grpc.add_EngineServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((mux_handler(servicer),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_insecure_port(f"unix:{unix_path}")
    await server.start()
    return server, f"127.0.0.1:{port}"


# -- the proxy end of the mux ------------------------------------------------------------------------

class _Pending:
    """The proxy end's requests awaiting answers, by request id."""

    def __init__(self):
        self._waiting: dict[bytes, asyncio.Queue] = {}
        self._ids = itertools.count(1)

    def answer(self, message: bytes) -> None:
        queue = self._waiting.get(message[:8])
        if queue is not None:
            queue.put_nowait((message[8], message[9:]))

    def forward(self, send):
        """The proxy's method: `send`s (awaitable) the tagged request, then yields its events until its end."""

        async def forward(request: bytes, context):
            rid = next(self._ids).to_bytes(8, "big")
            queue = self._waiting[rid] = asyncio.Queue()
            try:
                await send(rid + request)
                while True:
                    kind, payload = await queue.get()
                    if kind == EVENT:
                        yield payload
                    elif kind == END:
                        return
                    else:
                        await context.abort(grpc.StatusCode.INTERNAL, payload.decode())
            finally:
                del self._waiting[rid]

        return forward


async def serve_mux(target: str, token: str, *, channel_options=()) -> None:
    """A proxy whose requests all travel on one bidi stream to the replica (opened at start)."""
    from flint.security.internal import METADATA_KEY

    channel = grpc.aio.insecure_channel(target, options=list(channel_options))
    stream = channel.stream_stream(MUX_METHOD, request_serializer=bare._same, response_deserializer=bare._same)
    call = stream(metadata=((METADATA_KEY, token),))
    pending = _Pending()
    write_lock = asyncio.Lock()   # grpc.aio allows one write in flight per call

    async def dispatch() -> None:
        async for message in call:
            pending.answer(message)

    async def send(message: bytes) -> None:
        async with write_lock:
            await call.write(message)

    reader = asyncio.ensure_future(dispatch())
    await bare.serve_method(pending.forward(send))
    reader.cancel()
    call.cancel()
    await channel.close()


async def serve_raw(target: str) -> None:
    """A proxy whose requests all travel on one plain connection to `raw_server` (`unix:PATH` or HOST:PORT)."""
    if target.startswith("unix:"):
        reader, writer = await asyncio.open_unix_connection(target.removeprefix("unix:"))
    else:
        host, port = target.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
    pending = _Pending()

    async def dispatch() -> None:
        while True:
            pending.answer(await _read_frame(reader))

    async def send(message: bytes) -> None:
        writer.write(len(message).to_bytes(4, "big") + message)

    task = asyncio.ensure_future(dispatch())
    await bare.serve_method(pending.forward(send))
    task.cancel()
    writer.close()


def main(argv: list[str] | None = None) -> int:
    import json

    p = argparse.ArgumentParser(prog="python -m flint.bench.floor", description="the mux prototype's proxy")
    bare.add_arguments(p)
    args = p.parse_args(argv)
    from flint.security.internal import require_token

    if args.target.startswith("raw:"):
        serve = serve_raw(args.target.removeprefix("raw:"))
    else:
        serve = serve_mux(args.target, require_token(),
                          channel_options=[tuple(o) for o in json.loads(args.channel_options)])
    bare.run(serve, args.event_loop)
    return 0


# -- the measurement ---------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def demo_replica():
    """Embedded Valkey and a `ReplicaHost` serving the demo checkpoint in this process, as `flint bench cluster`
    sets them up (this process's internal token is made first); yields (host, redis_url, address)."""
    from flint.config import ReplicaConfig
    from flint.engine.config import EngineConfig
    from flint.engine.demo import ensure_demo_checkpoint
    from flint.replica.host import ReplicaHost
    from flint.security.internal import ensure_process_token
    from flint.valkey import EmbeddedValkey

    ensure_process_token()
    valkey = EmbeddedValkey()
    url = valkey.start()
    try:
        host = ReplicaHost(EngineConfig.from_dict({"model": str(ensure_demo_checkpoint()), "kv_cache_bytes": 1 << 26}),
                           ReplicaConfig(redis_url=url, key_prefix="bench"))
        address = await host.start()
        try:
            yield host, url, address
        finally:
            await host.stop(0)
    finally:
        valkey.stop()


async def compare(replica: str, proxies: dict[str, str], *, samples: int, baseline: str,
                  direct_also: dict[str, str] | None = None, prompt_tag: str = "") -> dict:
    """One-token TTFT straight to `replica` and through each proxy (name -> address), in an order shuffled each
    sample (a fixed cycle would give every variant the same predecessor, whose tail work it then always meets); per variant its TTFT, its per-sample difference from the direct call (`added_ttft_ms`) and from
    `baseline`'s (`vs_baseline_ms`, + = slower). `direct_also`: more direct targets (name -> address). Give each
    round its own `prompt_tag` (see cluster_measure.relay_overhead)."""
    from flint.bench.cluster_measure import _first_output_s, summary_ms
    from flint.internal.v1 import engine_pb2
    from flint.security.internal import EngineClient, resolve_token

    token = resolve_token()
    channels = {name: grpc.aio.insecure_channel(addr) for name, addr in {"direct": replica, **proxies,
                                                                          **(direct_also or {})}.items()}
    calls = {name: (EngineClient(channels[name], token).Generate if name == "direct" or name in (direct_also or {})
                    else bare.stub(channels[name])) for name in channels}
    ttft: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    try:
        for i in range(samples):
            prefix = f"def f_{prompt_tag}{i}(x):\n    return x + {i}\n"
            order = names[:]
            random.Random(i).shuffle(order)
            for name in order:
                ttft[name].append(await _first_output_s(calls[name](engine_pb2.GenerateRequest(
                    request_id=f"bench-{name}-{i}-{time.time_ns()}", prefix=prefix, cache_namespace=f"bench-{name}",
                    sampling=engine_pb2.SamplingParams(max_tokens=1)))))
    finally:
        for channel in channels.values():
            await channel.close()
    out = {}
    for name, values in ttft.items():
        out[name] = {"ttft_ms": summary_ms(values)}
        if name != "direct":
            out[name]["added_ttft_ms"] = summary_ms([v - d for v, d in zip(values, ttft["direct"])])
            out[name]["vs_baseline_ms"] = summary_ms([v - b for v, b in zip(values, ttft[baseline])])
    return out


if __name__ == "__main__":
    sys.exit(main())
