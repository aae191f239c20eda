"""flint.v1 over gRPC: one Session stream per job.

Interrupts and redirects are protocol messages here, so the record holds the
server's acknowledgement (`interrupted.last_seq`) and the generator can count
deltas that arrive after it (there must be none).

Lost streams (`resume = true`, the default): when the Session stream ends
UNAVAILABLE (its front-end worker died or drained), or one request ends
UNAVAILABLE (its engine replica died), every request concerned is resumed
with `Resume(request_id, last_seq)` on a new stream (any worker behind the
address serves it), and the job's Session stream is opened again for its
next requests. A request lost before the server journaled it (Resume says
NOT_FOUND and nothing was streamed) is sent again under a new id. Deltas keep their seqs, so a record shows a gap
or a repeat if the server lost or repeated a token; `record.resumes` counts
the resumes a request needed.

Document mode (`RequestSpec.document_id`): the first request of a document
opens it with prefix + suffix; each later one sends what changed since the
previous request as one EditDocument (the common head and tail of the two
texts are kept) and a CompleteRequest naming the cursor, so the wire carries
the keystrokes, not the file. A rejected edit (stale version) shows up as
the completion's FAILED_PRECONDITION error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import grpc

from flint.load.targets.base import Clock, RequestState, Session, Target
from flint.load.workload import RequestSpec
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

_FINISH = {pb.FINISH_REASON_EOS: "eos", pb.FINISH_REASON_LENGTH: "length", pb.FINISH_REASON_STOP: "stop",
           pb.FINISH_REASON_INTERRUPTED: "interrupted", pb.FINISH_REASON_TIME_LIMIT: "time_limit",
           pb.FINISH_REASON_UNSPECIFIED: "unspecified"}
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024   # 128K-token prompts are ~0.5 MB; leave room


def document_messages(spec: RequestSpec, documents: dict) -> tuple[list, pb.DocumentCursor]:
    """Messages that bring the server's copy of `spec.document_id` to prefix + suffix, and the cursor there."""
    from flint.doctext import DocText

    text = spec.prefix + spec.suffix
    known = documents.get(spec.document_id)   # (version, DocText) the server holds
    if known is None:
        out = [pb.ClientMessage(open_document=pb.OpenDocument(document_id=spec.document_id, path=spec.path,
                                                              text=text, version=1))]
        version, doc = 1, DocText(text)
    else:
        version, old = known
        head = _common_head(old.text, text)
        tail = _common_head(old.text[head:][::-1], text[head:][::-1])
        start, end = (old.position(o) for o in (head, len(old.text) - tail))
        edit = pb.TextEdit(range=pb.Range(start=pb.Position(line=start[0], character=start[1]),
                                          end=pb.Position(line=end[0], character=end[1])),
                           text=text[head:len(text) - tail])
        out = [pb.ClientMessage(edit_document=pb.EditDocument(document_id=spec.document_id, version=version,
                                                              edits=[edit]))]
        version, doc = version + 1, old.apply(head, len(old.text) - tail, text[head:len(text) - tail])
    documents[spec.document_id] = (version, doc)
    line, character = doc.position(len(spec.prefix))
    return out, pb.DocumentCursor(document_id=spec.document_id, version=version,
                                  cursor=pb.Position(line=line, character=character))


def _common_head(a: str, b: str) -> int:
    n = min(len(a), len(b))
    lo, hi = 0, n
    while lo < hi:                      # binary search on slices: C speed for long texts
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def to_proto(spec: RequestSpec, request_id: str, model: str):
    sampling = pb.Sampling(max_tokens=spec.max_tokens, temperature=spec.temperature, seed=spec.seed)
    context = [pb.ContextFile(path=p, content=c) for p, c in spec.context]
    if spec.kind == "edit":
        return pb.EditRequest(request_id=request_id, code=spec.code, instruction=spec.instruction,
                              prefix=spec.prefix, suffix=spec.suffix, path=spec.path, context=context,
                              sampling=sampling, model=model)
    return pb.CompleteRequest(request_id=request_id, prefix=spec.prefix, suffix=spec.suffix, context=context,
                              path=spec.path, sampling=sampling, model=model)


class FlintTarget(Target):
    def __init__(self, config, clock: Clock):
        self.config, self.clock = config, clock
        self.info: dict = {"protocol": "flint", "address": config.address}
        self._channel: grpc.aio.Channel | None = None

    async def start(self) -> None:
        options = [("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES)]
        key = os.environ.get(self.config.api_key_env, "") if self.config.api_key_env else ""
        self.metadata = (("authorization", f"Bearer {key}"),) if key else ()
        if self.config.tls_ca_file:
            if self.config.tls_server_name:
                options.append(("grpc.ssl_target_name_override", self.config.tls_server_name))
            credentials = grpc.ssl_channel_credentials(Path(self.config.tls_ca_file).read_bytes())
            self._channel = grpc.aio.secure_channel(self.config.address, credentials, options=options)
        else:
            self._channel = grpc.aio.insecure_channel(self.config.address, options=options)
        await asyncio.wait_for(self._channel.channel_ready(), self.config.connect_timeout_s)
        self.stub = flint_pb2_grpc.FlintStub(self._channel)
        warmup = await self.open_session(-1)      # the first stream pays for connection setup, not a request
        await warmup.close()

    async def open_session(self, job_index: int) -> "FlintSession":
        session = FlintSession(self, job_index)
        await session.open()
        return session

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


class FlintSession(Session):
    def __init__(self, target: FlintTarget, job_index: int):
        self.target, self.clock = target, target.clock
        self.states: dict[str, RequestState] = {}
        self.ended: dict[str, RequestState] = {}   # an interrupt's ack may arrive after the request's Final
        self._write_lock = asyncio.Lock()
        self._opened = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self._resuming: set[asyncio.Task] = set()
        self._closing = False
        self.documents: dict = {}   # document mode: document id -> (version, DocText) the server holds

    async def open(self) -> None:
        self.call = self.target.stub.Session(metadata=self.target.metadata)
        await self.call.write(pb.ClientMessage(open=pb.Open(model=self.target.config.model, client="flint-load")))
        self._reader = asyncio.create_task(self._read())
        await asyncio.wait_for(self._opened.wait(), self.target.config.connect_timeout_s)

    async def _write(self, message: pb.ClientMessage) -> None:
        async with self._write_lock:
            await self.call.write(message)

    async def send(self, state: RequestState, redirect_of: RequestState | None = None) -> None:
        rid = state.server_id
        request = to_proto(state.spec, rid, self.target.config.model)
        field = "edit" if state.spec.kind == "edit" else "complete"
        self.states[rid] = state
        if state.spec.document_id and field == "complete":
            before, cursor = document_messages(state.spec, self.documents)
            request.ClearField("prefix")
            request.ClearField("suffix")
            request.document.CopyFrom(cursor)
            for message in before:
                await self._write(message)
        if redirect_of is not None and not redirect_of.done.is_set():
            redirect_of.mark_interrupt("redirect")
            message = pb.ClientMessage(redirect=pb.Redirect(interrupt_request_id=redirect_of.server_id,
                                                            **{field: request}))
        else:
            message = pb.ClientMessage(**{field: request})
        state.record.t_sent_ms = self.clock()
        for attempt in range(40):
            try:
                await self._write(message)
                return
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                # The Session stream just died. If the reader already handed this request to a resume,
                # that path sends it again; otherwise write it on the reopened stream.
                if not self.target.config.resume or self._closing or attempt == 39:
                    raise
                if self.states.get(rid) is not state:
                    return   # the reader handed it to `_resume`, which sends it again
                await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))

    async def interrupt(self, state: RequestState) -> None:
        if state.done.is_set():
            return
        state.mark_interrupt("interrupt")
        await self._write(pb.ClientMessage(interrupt=pb.InterruptRequest(request_id=state.server_id)))

    async def _read(self) -> None:
        while True:
            try:
                async for message in self.call:
                    self._dispatch(message)
                self._fail_open("STREAM_ENDED", "the Session stream ended before this request finished")
                return
            except grpc.aio.AioRpcError as exc:
                if not self._resumable(exc):
                    self._fail_open(exc.code().name, exc.details() or "")
                    return
                lost, self.states = list(self.states.values()), {}
                for state in lost:
                    task = asyncio.create_task(self._resume(state))
                    self._resuming.add(task)
                    task.add_done_callback(self._resuming.discard)
                if not await self._reopen():
                    self._fail_open(exc.code().name, "the Session stream could not be opened again")
                    return
            except asyncio.CancelledError:
                self._fail_open("ABANDONED", "still running when the run ended")
                raise

    def _resumable(self, exc: grpc.aio.AioRpcError) -> bool:
        return self.target.config.resume and not self._closing and exc.code() == grpc.StatusCode.UNAVAILABLE

    async def _reopen(self, attempts: int = 40) -> bool:
        """A new Session stream for the job's next requests (its reader is the running `_read` loop)."""
        self.documents.clear()     # a new stream is a new session: documents are opened again
        for attempt in range(attempts):
            try:
                async with self._write_lock:
                    self.call = self.target.stub.Session(metadata=self.target.metadata)
                    await self.call.write(pb.ClientMessage(open=pb.Open(model=self.target.config.model,
                                                                        client="flint-load")))
                return True
            except (grpc.aio.AioRpcError, grpc.aio.UsageError):
                await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
        return False

    async def _resume(self, state: RequestState, attempts: int = 40) -> None:
        """Resume one request after its stream was lost: the missing deltas exactly once, then the rest."""
        rid = state.server_id
        for attempt in range(attempts):
            last_seq = max((int(d[1]) for d in state.record.deltas), default=0)
            state.record.resumes += 1
            try:
                call = self.target.stub.Resume(pb.ResumeRequest(request_id=rid, last_seq=last_seq),
                                               timeout=self.target.config.request_timeout_s,
                                               metadata=self.target.metadata)
                retry = False
                async for message in call:
                    kind = message.WhichOneof("kind")
                    if kind == "error" and message.error.code == grpc.StatusCode.UNAVAILABLE.value[0]:
                        retry = True   # the replica running it went away again: resume once more
                        break
                    if kind in ("delta", "accepted", "interrupted", "final", "error"):
                        self._apply(state, kind, getattr(message, kind))
                if not retry:
                    if not state.done.is_set():
                        state.finish("error", error_code="STREAM_ENDED",
                                     error_message="the resumed stream ended early")
                    return
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND and not state.record.deltas and not self._closing:
                    # Lost before the server journaled it (nothing was streamed): send it again, under a new
                    # id (the dead worker's claim on the old one may not have expired yet).
                    state.server_id = f"{state.record.id}.r{state.record.resumes}"
                    await self.send(state)
                    return
                if not self._resumable(exc) or attempt == attempts - 1:
                    state.finish("error", error_code=exc.code().name, error_message=exc.details() or "")
                    return
            await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
        state.finish("error", error_code="UNAVAILABLE", error_message=f"still unavailable after {attempts} resumes")

    def _dispatch(self, message: pb.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "opened":
            self.target.info.update(model=message.opened.model, max_context_tokens=message.opened.max_context_tokens)
            self._opened.set()
            return
        if kind == "document":       # document mode: the server's version after an open/edit
            return
        body = getattr(message, kind)
        state = self.states.get(body.request_id)
        if state is None:
            if kind == "interrupted" and body.request_id in self.ended:
                self.ended[body.request_id].ack(body.last_seq)
            return
        self._apply(state, kind, body)

    def _apply(self, state: RequestState, kind: str, body) -> None:
        if kind == "delta":
            state.delta(body.seq, body.token_count)
        elif kind == "accepted":
            state.accepted(body.prompt_tokens)
        elif kind == "interrupted":
            state.ack(body.last_seq)
        elif kind == "final":
            record = state.record
            record.prompt_tokens, record.completion_tokens = body.prompt_tokens, body.completion_tokens
            record.cached_prompt_tokens, record.replica_id = body.cached_prompt_tokens, body.replica_id
            record.withheld_tokens = body.withheld_tokens
            t = body.timings
            record.server = {"queue_ms": t.queue_ms, "prefill_ms": t.prefill_ms, "first_token_ms": t.first_token_ms,
                             "decode_ms": t.decode_ms, "total_ms": t.total_ms}
            state.finish(_FINISH.get(body.finish_reason, "unspecified"))
            self.ended[body.request_id] = state
            self.states.pop(body.request_id, None)
        elif kind == "error":
            self.states.pop(body.request_id, None)
            code = _CODE_NAMES.get(body.code, f"CODE_{body.code}")
            if code == "UNAVAILABLE" and self.target.config.resume and not self._closing:
                # Its replica went away: Resume runs it again on a live one and sends only what is missing.
                task = asyncio.create_task(self._resume(state))
                self._resuming.add(task)
                task.add_done_callback(self._resuming.discard)
                return
            state.finish("error", error_code=code, error_message=body.message)

    def _fail_open(self, code: str, message: str) -> None:
        for state in list(self.states.values()):
            state.finish("error", error_code=code, error_message=message)
        self.states.clear()
        self._opened.set()

    async def close(self) -> None:
        self._closing = True
        for task in list(self._resuming):
            task.cancel()
        self._fail_open("ABANDONED", "still running when the run ended")
        with contextlib.suppress(Exception):
            async with self._write_lock:
                await self.call.done_writing()
        if self._reader is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 2.0)
            except (asyncio.TimeoutError, Exception):
                self._reader.cancel()
                with contextlib.suppress(BaseException):
                    await self._reader
        self.call.cancel()
