"""One request's stream from an engine replica to a client, and how it stops.

The relay task reads the internal Generate stream and emits public
messages with no await between receiving an event and emitting it, so
`last_seq` is always the seq of the last delta handed to the client. To
interrupt, the task is cancelled (which cancels the engine call, so the
engine frees the slot at its next step); the relay then emits a Final with
FINISH_REASON_INTERRUPTED and records the final state in Redis *before*
`interrupt()` returns, so the acknowledgement that follows can promise that
no delta with a higher seq will come.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

import grpc

from flint.errors import FlintError
from flint.frontend.interrupts import InterruptResult
from flint.frontend.store import RequestRecord, Store
from flint.grpc_status import from_rpc_error, peer_unavailable
from flint.internal.v1 import engine_pb2 as ipb
from flint.internal.v1 import engine_pb2_grpc
from flint.v1 import flint_pb2 as pb

log = logging.getLogger(__name__)

_EOF = object()


def _is_delta(item) -> bool:
    return isinstance(item, ipb.GenerateEvent) and item.HasField("delta")


class RequestRelay:
    def __init__(self, *, record: RequestRecord, engine_request: ipb.GenerateRequest,
                 stub: engine_pb2_grpc.EngineStub, replica_address: str, store: Store,
                 emit: Callable[[pb.ServerMessage], None], fail: Callable[[FlintError], None],
                 on_done: Callable[["RequestRelay"], None], journal=None, metadata=()):
        self.record = record
        self.request_id = record.request_id
        self.last_seq = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self._engine_request = engine_request
        self._stub = stub
        self._replica_address = replica_address
        self._store = store
        self._emit = emit
        self._fail = fail
        self._on_done = on_done
        self._ended = False          # a Final or an error has been emitted
        self._interrupting = False
        self._stopping = False       # the relay task has been cancelled (by interrupt() or cancel()): once only
        self._interrupted: asyncio.Future | None = None  # the one interrupt every caller awaits
        self._task: asyncio.Task | None = None
        # Resume journal (flint.frontend.journal.RequestJournal): each message is journaled before it is
        # handed to the client, so whatever a client has seen a resume elsewhere can replay.
        self._journal = journal
        self._metadata = metadata  # trace context for the engine call (flint.observability.tracing)
        self._unsent: pb.ServerMessage | None = None  # journaled (or being journaled), not yet emitted
        self._seq = 0                # seq given to the last delta built (client numbering: 1, 2, 3, ...)
        self._reader: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"relay {self.request_id}")

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.wait({self._task})

    async def interrupt(self) -> InterruptResult:
        """Stop relaying, cancel the engine call, record the state; then the caller may acknowledge.

        Idempotent: the owner hears one cross-worker interrupt twice (pub/sub and the flag poll), so every
        caller after the first awaits the first one's stop and gets the same result; the shield keeps one
        caller going away (a cancelled ack task) from abandoning the stop for the others."""
        if self._interrupted is None:
            if self._ended or self._task is None:
                await self.wait()
                return InterruptResult(self.request_id, False, self.last_seq)
            self._interrupted = asyncio.ensure_future(self._stop_interrupting())
        return await asyncio.shield(self._interrupted)

    async def _stop_interrupting(self) -> InterruptResult:
        self._interrupting = True  # also after cancel(): the relay then still ends with an interrupted Final
        self._cancel_once()
        await asyncio.wait({self._task})
        return InterruptResult(self.request_id, True, self.last_seq)

    async def cancel(self) -> None:
        """The client went away: cancel the engine call without emitting anything."""
        if self._task is not None and not self._task.done():
            self._cancel_once()
            await asyncio.wait({self._task})

    def _cancel_once(self) -> None:
        """A second cancel() would land in the relay's end-of-stream work (see `_unstoppable`)."""
        if not self._stopping:
            self._stopping = True
            self._task.cancel()

    async def _unstoppable(self, work):
        """Run end-of-stream work to completion in the relay task even if the task is cancelled again
        meanwhile: it is already stopping, and cutting this short would lose the Final (the client's
        stream then never ends) or the record of the end (the interrupting worker then never learns)."""
        inner = asyncio.ensure_future(work)
        while not inner.done():
            try:
                await asyncio.wait({inner})
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()
        return inner.result()

    async def _run(self) -> None:
        state = "failed"
        call = self._stub.Generate(self._engine_request, metadata=self._metadata)
        try:
            async for event in self._events(call):
                message = self._message(event)
                if message is None:
                    continue
                if self._journal is not None:
                    self._unsent = message
                    await self._journal.record(message)
                self._unsent = None
                self._deliver(message)
            state = "finished" if self._ended else "failed"
            if not self._ended:
                self._end_with_error(FlintError("engine stream ended without a final message"))
        except asyncio.CancelledError:
            call.cancel()
            state = "interrupted"
            if not self._interrupting:
                raise
            await self._unstoppable(self._end_interrupted())
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err, peer=f"engine replica {self._replica_address}")
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                error = peer_unavailable("the engine replica serving this request", err, peer=self._replica_address,
                                         hint="resume the request (Resume with its id and last seq) or send it again")
            if self._journal is not None and not error.retryable:  # retryable: a resume runs it again
                from flint.frontend.session import request_error

                await self._unstoppable(self._journal.record(request_error(self.request_id, error)))
            self._end_with_error(error)
        finally:
            call.cancel()
            if self._reader is not None:
                self._reader.cancel()
            try:  # record first: an interrupt racing with the end then still finds this relay
                self.record = await self._unstoppable(self._store.finish_request(self.record, state, self.last_seq))
            except Exception as exc:  # noqa: BLE001 - the stream already ended; the record expires
                log.warning("could not record the end of request %s: %s", self.request_id, exc)
            finally:
                self._on_done(self)

    async def _end_interrupted(self) -> None:
        if self._unsent is not None:  # already journaled: deliver it, so the final's seq follows it
            self._deliver(self._unsent)
        if not self._ended:
            final = self._final_interrupted()
            if self._journal is not None:
                await self._journal.record(final)
            self._emit(final)
            self._ended = True

    async def _events(self, call):
        """The engine's events. With the journal on, deltas that arrive while a journal write is in
        flight are merged into one (text joined, token counts summed): a stream that is behind catches
        up with one Redis append and one client message instead of one per token. Seqs are given when
        messages are built (`_message`), so the client still sees 1, 2, 3, ... with no gaps."""
        if self._journal is None:
            async for event in call:
                yield event
            return
        buffer: collections.deque = collections.deque()
        wake = asyncio.Event()

        async def read() -> None:
            try:
                async for event in call:
                    buffer.append(event)
                    wake.set()
                buffer.append(_EOF)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the relay task
                buffer.append(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
            finally:
                wake.set()

        self._reader = asyncio.create_task(read(), name=f"relay reader {self.request_id}")
        while True:
            if not buffer:
                wake.clear()
                await wake.wait()
            event = buffer.popleft()
            if event is _EOF:
                return
            if isinstance(event, BaseException):
                raise event
            if _is_delta(event) and buffer and _is_delta(buffer[0]):
                merged = ipb.Delta()
                merged.MergeFrom(event.delta)
                while buffer and _is_delta(buffer[0]):
                    d = buffer.popleft().delta
                    merged.text += d.text
                    merged.token_count += d.token_count
                    merged.seq = d.seq
                event = ipb.GenerateEvent(delta=merged)
            yield event

    def _message(self, event: ipb.GenerateEvent) -> pb.ServerMessage | None:
        kind = event.WhichOneof("kind")
        if kind == "delta":
            self._seq += 1
            return pb.ServerMessage(delta=pb.Delta(request_id=self.request_id, seq=self._seq,
                                                   text=event.delta.text, token_count=event.delta.token_count))
        if kind == "started":
            self.prompt_tokens = event.started.prompt_tokens
            return pb.ServerMessage(accepted=pb.Accepted(request_id=self.request_id,
                                                         prompt_tokens=event.started.prompt_tokens))
        if kind == "final":
            return self._final(event.final)
        return None

    def _deliver(self, message: pb.ServerMessage) -> None:
        """Hand a message to the client: no await between updating last_seq and emitting."""
        kind = message.WhichOneof("kind")
        if kind == "delta":
            self.last_seq = message.delta.seq
            self.completion_tokens += message.delta.token_count
        elif kind == "final":
            self._ended = True
        self._emit(message)

    def _end_with_error(self, error: FlintError) -> None:
        self._ended = True
        self._fail(error)

    def _total_ms(self) -> float:
        return (time.time() - self._engine_request.arrival_unix_s) * 1000.0

    def _final(self, f: ipb.Final) -> pb.ServerMessage:
        timings = pb.Timings(queue_ms=f.queue_ms, prefill_ms=f.prefill_ms, first_token_ms=f.first_token_ms,
                             decode_ms=f.decode_ms, total_ms=self._total_ms())
        return pb.ServerMessage(final=pb.Final(
            request_id=self.request_id, seq=self._seq + 1, finish_reason=f.finish_reason,
            prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens,
            cached_prompt_tokens=f.cached_prompt_tokens, timings=timings,
            draft_tokens=f.draft_tokens, accepted_draft_tokens=f.accepted_draft_tokens,
            replica_id=self.record.replica_id))

    def _final_interrupted(self) -> pb.ServerMessage:
        return pb.ServerMessage(final=pb.Final(
            request_id=self.request_id, seq=self.last_seq + 1, finish_reason=pb.FINISH_REASON_INTERRUPTED,
            prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
            timings=pb.Timings(total_ms=self._total_ms()), replica_id=self.record.replica_id))
