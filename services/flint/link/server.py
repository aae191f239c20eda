"""The replica end of the engine link: the replica's `EngineServicer.Generate`, served on plain connections.

`LinkServer` listens beside the replica's gRPC server (same private interface; port 0 in tests). Each
connection must open with a HELLO frame carrying the deployment's internal token (compared with
`hmac.compare_digest`); any other first frame, or a wrong token, is answered with END UNAUTHENTICATED on
request id 0 and the connection is closed. After it, every REQUEST runs `servicer.Generate` in a task of its
own with a `LinkContext` (the servicer reads the call's metadata; abort and status setters work as on a
gRPC context); its events go back as EVENT frames, one `transport.write` each, and its end as END with the
status and details the servicer's error maps to (flint.grpc_status, the mapping the gRPC server uses). A
CANCEL cancels that request's task, which closes the engine's iterator: the engine frees the request at its
next step, as when a gRPC caller cancels. A connection that goes away cancels all of its requests.

Backpressure: a request the worker sent PAUSE for (its call's queue is full) takes no more events from the
engine until RESUME, while the connection's other requests go on; and a request whose events fill the
connection's write buffer past the transport's high-water mark waits (`drain`) before its next event, so the
link's buffer does not grow for a worker that stops reading. Either way the request's output waits in the
engine's queue for it (bounded by its max_tokens), as behind a gRPC stream whose flow-control window is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

import grpc

from flint.grpc_status import as_flint_error, code_number, status_code
from flint.internal.v1 import engine_pb2 as pb
from flint.link import frames as fr

log = logging.getLogger(__name__)

UNAUTHENTICATED_MESSAGE = "this is an internal flint API: calls need the deployment's internal token"


class LinkAbort(Exception):
    """`LinkContext.abort`: ends the request with this status."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self.code = code
        self.details = details


class LinkContext:
    """What `EngineServicer.Generate` uses of a gRPC servicer context, for a request on the link."""

    def __init__(self, metadata: tuple, peer: str):
        self._metadata = metadata
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self.cancelled_by_peer = False
        self.flowing = asyncio.Event()   # cleared by the worker's PAUSE for this request, set by its RESUME
        self.flowing.set()

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def set_trailing_metadata(self, metadata) -> None:
        pass   # the link's END carries the status, details and retry delay only

    def cancelled(self) -> bool:
        return self.cancelled_by_peer

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        raise LinkAbort(code, details)

    def status(self) -> tuple[int, str]:
        """The status a servicer set without raising (OK unless `set_code` said otherwise)."""
        code = self._code or grpc.StatusCode.OK
        return code_number(code), self._details


class LinkServer:
    """Serves `servicer.Generate` on the engine link for callers holding `token`."""

    def __init__(self, servicer, token: str, *, max_frame_bytes: int = fr.MAX_FRAME_BYTES):
        self.servicer = servicer
        self._token = token.encode()
        self._max_frame_bytes = max_frame_bytes
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_ReplicaConnection] = set()
        self.closing = False   # stop() began: new requests are refused UNAVAILABLE, running ones finish

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on host:port (0 = any free port); returns the port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ReplicaConnection(self), host, port)
        return self._server.sockets[0].getsockname()[1]

    def token_matches(self, presented: bytes) -> bool:
        return hmac.compare_digest(presented, self._token)

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; running requests get `grace_s` to finish, then are cancelled; connections close."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        running = [task for conn in self._connections for task in conn.tasks.values()]
        if running and grace_s > 0:
            await asyncio.wait(running, timeout=grace_s)
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None


class _ReplicaConnection(asyncio.Protocol):
    """One worker's connection: its HELLO, then its requests, multiplexed by request id."""

    def __init__(self, server: LinkServer):
        self._server = server
        self._reader = fr.FrameReader(fr.MAX_HELLO_BYTES)   # the full bound once the token is checked
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._authenticated = False
        self._paused = False
        self._drained: asyncio.Future | None = None
        self.tasks: dict[int, asyncio.Task] = {}
        self._contexts: dict[int, LinkContext] = {}

    # ------------------------------------------------------------ transport callbacks
    def connection_made(self, transport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._server._connections.add(self)

    def connection_lost(self, exc) -> None:
        self._server._connections.discard(self)
        self._transport = None
        for rid, task in list(self.tasks.items()):
            self._contexts[rid].cancelled_by_peer = True
            task.cancel()
        self._wake_writers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writers()

    def data_received(self, data: bytes) -> None:
        self._reader.push(data)
        while self._transport is not None and not self._transport.is_closing():
            try:
                received = self._reader.next()
            except fr.FrameError as exc:
                log.warning("engine link from %s: %s; closing the connection", self._peer, exc)
                self.close()
                return
            if received is None:
                return
            kind, rid, payload = received
            if not self._authenticated:
                if kind == fr.HELLO and self._server.token_matches(payload):
                    self._authenticated = True
                    self._reader.max_frame_bytes = self._server._max_frame_bytes
                    continue
                self._refuse()
                return
            if kind == fr.REQUEST:
                self._start(rid, payload)
            elif kind == fr.CANCEL:
                task = self.tasks.get(rid)
                if task is not None:
                    self._contexts[rid].cancelled_by_peer = True
                    task.cancel()
            elif kind == fr.PING:
                self._write(fr.PONG, 0, payload)
            elif kind in (fr.PAUSE, fr.RESUME):
                context = self._contexts.get(rid)
                if context is not None:
                    if kind == fr.PAUSE:
                        context.flowing.clear()
                    else:
                        context.flowing.set()

    # ------------------------------------------------------------ requests
    def _start(self, rid: int, payload: bytes) -> None:
        if self._server.closing:
            self._end(rid, code_number(grpc.StatusCode.UNAVAILABLE), "the engine replica is shutting down")
            return
        if rid in self.tasks:
            self._end(rid, code_number(grpc.StatusCode.INTERNAL), f"request id {rid} is in use on this connection")
            return
        metadata, body = fr.split_request(payload)
        context = self._contexts[rid] = LinkContext(metadata, self._peer)
        task = self.tasks[rid] = asyncio.get_running_loop().create_task(self._run(rid, body, context))
        task.add_done_callback(lambda _task: self._forget(rid))   # also for a task cancelled before it ran

    def _forget(self, rid: int) -> None:
        del self.tasks[rid], self._contexts[rid]

    async def _run(self, rid: int, body: bytes, context: LinkContext) -> None:
        try:
            request = pb.GenerateRequest.FromString(body)
            async with contextlib.aclosing(self._server.servicer.Generate(request, context)) as events:
                async for event in events:
                    self._write(fr.EVENT, rid, event.SerializeToString())
                    if self._paused:
                        await self._drain()
                    if not context.flowing.is_set():   # the worker's queue for this call is full
                        await context.flowing.wait()
            code, details, retry_after_ms = *context.status(), 0
        except LinkAbort as abort:
            code, details, retry_after_ms = code_number(abort.code), abort.details, 0
        except Exception as exc:  # noqa: BLE001 - mapped to a status, as the gRPC server's ErrorInterceptor does
            error = as_flint_error(exc)
            code, details, retry_after_ms = code_number(status_code(error)), error.message, error.retry_after_ms
        self._end(rid, code, details, retry_after_ms)

    def _end(self, rid: int, code: int, details: str, retry_after_ms: int = 0) -> None:
        self._write(fr.END, rid, fr.end_payload(code, details, retry_after_ms))

    # ------------------------------------------------------------ writing
    def _write(self, kind: int, rid: int, payload: bytes) -> None:
        """One frame, one `transport.write`; dropped once the connection is closing (its requests are cancelled)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(fr.frame(kind, rid, payload))

    async def _drain(self) -> None:
        if self._drained is None:
            self._drained = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._drained)
        if self._transport is None:
            raise ConnectionResetError("the engine link's connection closed")

    def _wake_writers(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _refuse(self) -> None:
        self._write(fr.END, 0, fr.end_payload(code_number(grpc.StatusCode.UNAUTHENTICATED), UNAUTHENTICATED_MESSAGE))
        log.warning("engine link from %s: refused (no or a wrong internal token)", self._peer)
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
