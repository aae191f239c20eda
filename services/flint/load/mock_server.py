"""A mock token server implementing flint.v1, for calibrating the load generator.

It generates no text worth reading: each request gets `max_tokens` tokens
("tok "), the first after `ttft_ms`, then at `tokens_per_s`, `coalesce` tokens
per delta. With `max_streams` > 0 at most that many requests stream at once
and the rest queue, so the mock has a knee of its own. Interrupts and
redirects follow the protocol (ack with last_seq, then a Final with
FINISH_REASON_INTERRUPTED, no delta after the ack).

Run against it, the generator measures its own ceiling: a server that answers
at once shows how many requests/s and deltas/s this generator can drive on
this machine. `flint load mock-server` serves it; tests bind port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import grpc

from flint.errors import InvalidArgument
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc


@dataclass(frozen=True)
class MockConfig:
    tokens_per_s: float = 1000.0             # per stream
    ttft_ms: float = 5.0
    coalesce: int = 1                        # tokens per delta
    max_streams: int = 0                     # 0 = unlimited; more requests queue
    default_max_tokens: int = 128
    chars_per_token: float = 3.6             # to report prompt_tokens
    model: str = "mock"
    ack_after_final: bool = False            # send an interrupt's ack after the Final (as flint's front-end may)

    def __post_init__(self):
        if self.tokens_per_s <= 0 or self.ttft_ms < 0 or self.coalesce < 1 or self.max_streams < 0:
            raise InvalidArgument("mock: tokens_per_s > 0, ttft_ms >= 0, coalesce >= 1, max_streams >= 0 required")


class _Stream:
    """The requests of one server stream; deltas of all of them go out through one queue."""

    def __init__(self, servicer: "MockServicer"):
        self.servicer = servicer
        self.out: asyncio.Queue = asyncio.Queue()
        self.tasks: dict[str, asyncio.Task] = {}
        self.last_seq: dict[str, int] = {}
        self.count = 0

    def start(self, request) -> None:
        self.count += 1
        request_id = request.request_id or f"mock-{id(self)}-{self.count}"
        max_tokens = request.sampling.max_tokens if request.sampling.HasField("max_tokens") else \
            self.servicer.config.default_max_tokens
        if max_tokens < 1:
            self.out.put_nowait(pb.ServerMessage(error=pb.RequestError(
                request_id=request_id, code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                message="sampling.max_tokens must be >= 1")))
            return
        chars = sum(len(getattr(request, f, "")) for f in ("prefix", "suffix", "code", "instruction"))
        chars += sum(len(c.content) for c in request.context)
        prompt_tokens = int(chars / self.servicer.config.chars_per_token)
        self.out.put_nowait(pb.ServerMessage(accepted=pb.Accepted(request_id=request_id, prompt_tokens=prompt_tokens)))
        self.last_seq[request_id] = 0
        self.tasks[request_id] = asyncio.create_task(self._generate(request_id, max_tokens, prompt_tokens))

    async def _generate(self, request_id: str, max_tokens: int, prompt_tokens: int) -> None:
        cfg, t_arrival = self.servicer.config, time.perf_counter()
        limit = self.servicer.limit
        async with limit if limit is not None else contextlib.nullcontext():
            t_start = time.perf_counter()
            await asyncio.sleep(cfg.ttft_ms / 1000.0)
            t_first, sent, seq = time.perf_counter(), 0, 0
            while sent < max_tokens:
                n = min(cfg.coalesce, max_tokens - sent)
                due = t_first + (sent + n - 1) / cfg.tokens_per_s
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                seq, sent = seq + 1, sent + n
                self.last_seq[request_id] = seq
                self.out.put_nowait(pb.ServerMessage(delta=pb.Delta(request_id=request_id, seq=seq,
                                                                    text="tok " * n, token_count=n)))
        t_end = time.perf_counter()
        timings = pb.Timings(queue_ms=(t_start - t_arrival) * 1e3, prefill_ms=0.0,
                             first_token_ms=(t_first - t_arrival) * 1e3, decode_ms=(t_end - t_first) * 1e3,
                             total_ms=(t_end - t_arrival) * 1e3)
        self._final(request_id, pb.FINISH_REASON_LENGTH, prompt_tokens, sent, timings)

    def _final(self, request_id, reason, prompt_tokens, completion_tokens, timings=None) -> None:
        self.tasks.pop(request_id, None)
        self.out.put_nowait(pb.ServerMessage(final=pb.Final(
            request_id=request_id, seq=self.last_seq.pop(request_id, 0) + 1, finish_reason=reason,
            prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, timings=timings or pb.Timings(),
            replica_id="mock")))

    def interrupt(self, request_id: str) -> None:
        task = self.tasks.get(request_id)
        was_running = task is not None and not task.done()
        if was_running:
            task.cancel()
        last = self.last_seq.get(request_id, 0)
        ack = pb.ServerMessage(interrupted=pb.InterruptResponse(request_id=request_id, was_running=was_running,
                                                                last_seq=last))
        if not self.servicer.config.ack_after_final:
            self.out.put_nowait(ack)
        if was_running:
            self._final(request_id, pb.FINISH_REASON_INTERRUPTED, 0, 0)
        if self.servicer.config.ack_after_final:
            self.out.put_nowait(ack)

    def close(self) -> None:
        for task in self.tasks.values():
            task.cancel()


class MockServicer(flint_pb2_grpc.FlintServicer):
    def __init__(self, config: MockConfig):
        self.config = config
        self.limit = asyncio.Semaphore(config.max_streams) if config.max_streams else None

    async def Session(self, request_iterator, context):
        stream = _Stream(self)

        async def read() -> None:
            async for message in request_iterator:
                kind = message.WhichOneof("kind")
                if kind == "open":
                    stream.out.put_nowait(pb.ServerMessage(opened=pb.Opened(
                        session_id=message.open.session_id or f"mock-session-{id(stream)}", model=self.config.model,
                        max_context_tokens=131072, worker_id="mock")))
                elif kind in ("complete", "edit"):
                    stream.start(getattr(message, kind))
                elif kind == "interrupt":
                    stream.interrupt(message.interrupt.request_id)
                elif kind == "redirect":
                    stream.interrupt(message.redirect.interrupt_request_id)
                    stream.start(getattr(message.redirect, message.redirect.WhichOneof("request")))
            stream.out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await stream.out.get()
                if item is None:
                    if not stream.tasks:
                        break
                    stream.out.put_nowait(None)   # wait for running requests to finish
                    await asyncio.sleep(0.005)
                    continue
                yield item
        finally:
            reader.cancel()
            stream.close()

    async def _single(self, request):
        stream = _Stream(self)
        stream.start(request)
        try:
            while True:
                item = await stream.out.get()
                yield item
                if item.WhichOneof("kind") in ("final", "error"):
                    return
        finally:
            stream.close()

    def Complete(self, request, context):
        return self._single(request)

    def Edit(self, request, context):
        return self._single(request)


async def start_mock_server(config: MockConfig, address: str = "127.0.0.1:0") -> tuple[grpc.aio.Server, int]:
    """A running mock server and its bound port; stop it with `await server.stop(grace)`."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    flint_pb2_grpc.add_FlintServicer_to_server(MockServicer(config), server)
    port = server.add_insecure_port(address)
    await server.start()
    return server, port


def _serve_process(config: MockConfig, address: str, ready, protocol: str = "flint") -> None:
    async def main() -> None:
        if protocol == "openai":
            from flint.load.mock_openai import start_openai_mock

            host, port = address.rsplit(":", 1)
            runner, bound = await start_openai_mock(config, host, int(port))
            ready.put(bound)
            await asyncio.Event().wait()
        server, bound = await start_mock_server(config, address)
        ready.put(bound)
        await server.wait_for_termination()

    asyncio.run(main())


class MockProcess:
    """The mock server in its own process (so it does not share the generator's event loop or GIL)."""

    def __init__(self, config: MockConfig, address: str = "127.0.0.1:0", protocol: str = "flint"):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        ready = ctx.Queue()
        self.process = ctx.Process(target=_serve_process, args=(config, address, ready, protocol), daemon=True)
        self.process.start()
        self.port = ready.get(timeout=60)
        self.address = f"127.0.0.1:{self.port}" if protocol == "flint" else f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.join(timeout=10)

    def __enter__(self) -> "MockProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
