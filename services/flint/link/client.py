"""The worker end of the engine link: `Generate` calls to one replica, multiplexed on one plain connection.

`LinkClient(address, token, liveness).Generate(request, metadata=, timeout=)` returns a `LinkCall` at once,
with the interface the request owner uses of a grpc.aio unary-stream call: async iteration of
`GenerateEvent`s, `cancel()`, `add_done_callback(fn)`, and a `grpc.aio.AioRpcError` with the replica's status
code and details when the call fails. So the owner's retry on UNAVAILABLE before any event, its mapping of
engine errors and its cancellation hold unchanged on the link.

- One connection per (worker, replica), opened on first use and again after it is lost; its first frame is
  HELLO with the internal token, sent with the first request (no round trip of its own). A refusal (END on
  request id 0) fails every call on it with the replica's status (UNAUTHENTICATED).
- A connect failure, or a connection lost, fails every call on it UNAVAILABLE (before any event, the owner
  tries another replica and the pool drops this one).
- Deadline: the call's `timeout` ends it DEADLINE_EXCEEDED and sends CANCEL, as gRPC's deadline would.
- `cancel()` sends CANCEL (the replica cancels that request's task; the engine frees it at its next step).
- Liveness, as the gRPC channel's keepalive (flint.frontend.liveness): a connection that heard nothing for
  `engine_keepalive_time_s` sends PING; nothing heard `engine_keepalive_timeout_s` after it (or no connection
  made within the sum of the two) declares it dead and fails its calls UNAVAILABLE.
- Backpressure, per call: a call holding `MAX_QUEUED_EVENTS` unread events sends PAUSE for its request (the
  replica stops taking that request's events from the engine, where they wait, bounded by its max_tokens),
  and RESUME once its reader has taken half of them. The call's queue therefore holds at most
  `MAX_QUEUED_EVENTS` plus what was in flight when the replica read the PAUSE. The connection itself never
  stops reading: one call nobody reads (an owner holding its first event until its claim holds, a stuck
  client) must not hold up the other requests on it, as a full gRPC stream's window holds up only its own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque

import grpc

from flint.grpc_status import RETRY_AFTER_KEY, code_number, code_of
from flint.internal.v1 import engine_pb2 as pb
from flint.link import frames as fr

log = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 64     # unread events of one call before it asks the replica to pause its request


class LinkClient:
    """This worker's engine link to one replica (`address` = host:port of its link)."""

    def __init__(self, address: str, token: str, liveness, *, max_frame_bytes: int = fr.MAX_FRAME_BYTES):
        self.address = address
        self._token = token.encode()
        self._keepalive_s = liveness.engine_keepalive_time_s
        self._timeout_s = liveness.engine_keepalive_timeout_s
        self._max_frame_bytes = max_frame_bytes
        self._connection: _Connection | None = None
        self.closed = False   # by `close()`: the pool let this replica go

    def Generate(self, request: pb.GenerateRequest, *, metadata=None, timeout: float | None = None,  # noqa: N802
                 **_ignored) -> "LinkCall":
        connection = self._connection
        if connection is None or connection.closed:
            connection = self._connection = _Connection(self)
        return connection.call(request, metadata, timeout)

    async def close(self) -> None:
        self.closed = True
        if self._connection is not None:
            self._connection.fail(grpc.StatusCode.UNAVAILABLE, "the engine link was closed by this worker")
            self._connection = None


class LinkCall:
    """One `Generate` on the link, consumed as a grpc.aio unary-stream call is."""

    def __init__(self, connection: "_Connection", request_id: int, timeout: float | None):
        self._connection = connection
        self._id = request_id
        self._loop = connection.loop
        self._events: deque[bytes] = deque()
        self._waiter: asyncio.Future | None = None
        self._status: tuple[int, str, int] | None = None   # (code, details, retry delay ms) once ended
        self._cancelled = False
        self._paused = False      # the replica was asked to pause this request (its queue is full)
        self._callbacks: list = []
        self._deadline = self._loop.call_later(timeout, self._expire) if timeout is not None else None

    # ------------------------------------------------------------ what the owner uses
    def __aiter__(self) -> "LinkCall":
        return self

    async def __anext__(self) -> pb.GenerateEvent:
        while True:
            if self._cancelled:
                raise asyncio.CancelledError
            if self._events:
                payload = self._events.popleft()
                if self._paused and len(self._events) < MAX_QUEUED_EVENTS // 2 and self._status is None:
                    self._paused = False
                    self._connection.send(fr.RESUME, self._id)
                return pb.GenerateEvent.FromString(payload)
            if self._status is not None:
                code, details, retry_after_ms = self._status
                if code == fr.OK:
                    raise StopAsyncIteration
                raise self._error(code, details, retry_after_ms)
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def cancel(self) -> bool:
        """End the call and tell the replica (CANCEL); reading it then raises CancelledError. False if it had ended."""
        if self._status is not None:
            return False
        self._cancelled = True
        self._events.clear()
        self._connection.cancel(self._id)
        self._finish(code_number(grpc.StatusCode.CANCELLED), "Locally cancelled by application!")
        return True

    def add_done_callback(self, fn) -> None:
        """`fn(call)` once the call has ended, however."""
        if self._status is not None:
            self._loop.call_soon(fn, self)
        else:
            self._callbacks.append(fn)

    def done(self) -> bool:
        return self._status is not None

    def cancelled(self) -> bool:
        return self._cancelled

    def code(self) -> grpc.StatusCode | None:
        return None if self._status is None else code_of(self._status[0])

    def details(self) -> str | None:
        return None if self._status is None else self._status[1]

    # ------------------------------------------------------------ what the connection feeds
    def feed(self, payload: bytes) -> None:
        self._events.append(payload)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if not self._paused and len(self._events) >= MAX_QUEUED_EVENTS:
            self._paused = True
            self._connection.send(fr.PAUSE, self._id)

    def end(self, code: int, details: str, retry_after_ms: int = 0) -> None:
        self._finish(code, details, retry_after_ms)

    def _expire(self) -> None:
        self._deadline = None
        if self._status is None:
            self._events.clear()
            self._connection.cancel(self._id)
            self._finish(code_number(grpc.StatusCode.DEADLINE_EXCEEDED), "Deadline Exceeded")

    def _finish(self, code: int, details: str, retry_after_ms: int = 0) -> None:
        if self._status is not None:
            return
        self._status = (code, details, retry_after_ms)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # noqa: BLE001 - one callback's failure must not keep the others from running
                log.exception("a done callback of an engine link call failed")

    @staticmethod
    def _error(code: int, details: str, retry_after_ms: int) -> grpc.aio.AioRpcError:
        trailing = ((RETRY_AFTER_KEY, str(retry_after_ms)),) if retry_after_ms else ()
        return grpc.aio.AioRpcError(code_of(code), grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


class _Connection(asyncio.Protocol):
    """One connection of a `LinkClient`: its calls by request id, its frames, its liveness clock."""

    def __init__(self, client: LinkClient):
        self.loop = asyncio.get_running_loop()
        self._client = client
        self._address = client.address
        self._calls: dict[int, LinkCall] = {}
        self._ids = itertools.count(1)
        self._reader = fr.FrameReader(client._max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._backlog: list[bytes] = [fr.frame(fr.HELLO, 0, client._token)]   # written once connected
        self._heard = self.loop.time()
        self._ping_sent: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._connecting = self.loop.create_task(self._connect(), name=f"engine link to {self._address}")

    async def _connect(self) -> None:
        host, _, port = self._address.rpartition(":")
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: self, host.strip("[]"), int(port)),
                                   self._client._keepalive_s + self._client._timeout_s)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            self.fail(grpc.StatusCode.UNAVAILABLE, f"failed to connect to the engine link at {self._address}: "
                      f"{exc or type(exc).__name__}")

    # ------------------------------------------------------------ calls
    def call(self, request: pb.GenerateRequest, metadata, timeout: float | None) -> LinkCall:
        rid = next(self._ids)
        call = LinkCall(self, rid, timeout)
        payload = fr.request_payload(request.SerializeToString(), metadata)
        if self.closed:
            call.end(code_number(grpc.StatusCode.UNAVAILABLE), f"the engine link to {self._address} is closed")
        elif len(payload) > self._client._max_frame_bytes:
            call.end(code_number(grpc.StatusCode.RESOURCE_EXHAUSTED),
                     f"Sent message larger than max ({len(payload)} vs. {self._client._max_frame_bytes})")
        else:
            self._calls[rid] = call
            self._write(fr.frame(fr.REQUEST, rid, payload))
        return call

    def cancel(self, rid: int) -> None:
        if self._calls.pop(rid, None) is not None:
            self._write(fr.frame(fr.CANCEL, rid))

    def send(self, kind: int, rid: int) -> None:
        """A frame with no payload for request `rid` (PAUSE, RESUME) if it is still open on this connection."""
        if rid in self._calls:
            self._write(fr.frame(kind, rid))

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)
        elif not self.closed:
            self._backlog.append(data)

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        """End the connection and every call on it with `code`."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._connecting.done() and self._connecting is not asyncio.current_task():
            self._connecting.cancel()
        calls, self._calls = self._calls, {}
        for call in calls.values():
            call.end(code_number(code), details)
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------ transport callbacks
    def connection_made(self, transport) -> None:
        if self.closed:
            transport.abort()
            return
        self._transport = transport
        backlog, self._backlog = self._backlog, []
        transport.write(b"".join(backlog))
        self._heard = self.loop.time()
        self._arm(self._heard + self._client._keepalive_s)

    def connection_lost(self, exc) -> None:
        self.fail(grpc.StatusCode.UNAVAILABLE, f"the engine link to {self._address} was lost "
                  f"({exc or 'closed by the replica'})")

    def data_received(self, data: bytes) -> None:
        self._heard, self._ping_sent = self.loop.time(), None
        self._reader.push(data)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand each whole frame received to its call."""
        while not self.closed:
            try:
                received = self._reader.next()
            except fr.FrameError as exc:
                self.fail(grpc.StatusCode.UNAVAILABLE, f"the engine link to {self._address} broke: {exc}")
                return
            if received is None:
                return
            kind, rid, payload = received
            if kind == fr.EVENT:
                call = self._calls.get(rid)
                if call is not None:
                    call.feed(payload)
            elif kind == fr.END:
                code, details, retry_after_ms = fr.split_end(payload)
                if rid == 0:   # the replica refused the connection (the token)
                    self.fail(code_of(code), details)
                    return
                call = self._calls.pop(rid, None)
                if call is not None:
                    call.end(code, details, retry_after_ms)

    # ------------------------------------------------------------ liveness
    def _arm(self, when: float) -> None:
        self._timer = self.loop.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self.loop.time()
        if self._ping_sent is not None:
            if now - self._ping_sent >= self._client._timeout_s:
                log.warning("engine link to %s: no answer to a ping within %g s; closing it", self._address,
                            self._client._timeout_s)
                self.fail(grpc.StatusCode.UNAVAILABLE, f"the engine replica at {self._address} did not answer a "
                          f"ping within {self._client._timeout_s:g} s")
                return
            self._arm(self._ping_sent + self._client._timeout_s)
        elif now - self._heard >= self._client._keepalive_s:
            self._ping_sent = now
            self._write(fr.frame(fr.PING, 0))
            self._arm(now + self._client._timeout_s)
        else:
            self._arm(self._heard + self._client._keepalive_s)
