"""One bidirectional Session stream: read client messages, interleave server messages.

A reader task handles client messages in order (open, complete, edit,
interrupt, redirect) while the handler yields from one outgoing queue fed by
the reader and by the owner of each of the stream's requests. A failed
request becomes a RequestError; the stream stays open. When the client half-closes, running
requests finish before the stream ends; when it disconnects, they are
cancelled so the engine frees their slots. A stream whose client sends
nothing for `security.session_idle_timeout_s` while none of its requests or
resumes runs ends DEADLINE_EXCEEDED, which frees its per-tenant stream slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc

from flint.errors import DeadlineExceeded, FlintError, InvalidArgument, NotFound
from flint.frontend.codec import Undecodable, on_call_end
from flint.frontend.documents import SessionDocuments, names_documents
from flint.frontend.outbox import Outbox
from flint.frontend.render import request_error, to_message
from flint.frontend.store import SessionRecord
from flint.frontend.validate import check_request_id, new_id, request_id_of, scope_request_id
from flint.grpc_status import code_number
from flint.security.context import current_tenant
from flint.security.limits import check_model_name
from flint.v1 import flint_pb2 as pb

_END = object()


class SessionStream:
    def __init__(self, servicer, context=None):
        self._servicer = servicer
        self._context = context
        self._out = Outbox(servicer.buffers)   # bounded: slow readers get merged deltas, then RESOURCE_EXHAUSTED
        self._session: SessionRecord | None = None
        self._owners = {}
        self._resumes: set[asyncio.Task] = set()
        self._docs: SessionDocuments | None = None
        self._docs_session = ""
        guard = servicer.guard
        self._idle_s = guard.security.session_idle_timeout_s if guard is not None else 0.0   # 0 = never
        self._active_at = time.monotonic()      # the client's last message, or the last sign of a running request

    async def run(self, request_iterator):
        reader = asyncio.create_task(self._read(request_iterator), name="session reader")
        idle = asyncio.create_task(self._watch_idle(reader), name="session idle") if self._idle_s else None
        if self._context is not None:
            on_call_end(self._context, lambda: self._call_ended(reader))
        try:
            while True:
                message = await self._out.get()
                if message is _END:
                    return
                if isinstance(message, FlintError):   # the stream ends with this status
                    raise message
                yield message if isinstance(message, pb.ServerMessage) else to_message(message)
        finally:
            for task in (reader, idle):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            for owner in list(self._owners.values()):
                await owner.cancel()
            for task in list(self._resumes):
                task.cancel()

    def _call_ended(self, reader: asyncio.Task) -> None:
        """The client cancelled (or the call is over): stop reading and every request, even one starting now."""
        reader.cancel()
        for owner in list(self._owners.values()):
            owner.cancel_soon()
        self._out.put_nowait(_END)

    async def _watch_idle(self, reader: asyncio.Task) -> None:
        """End the stream once the client has sent nothing for `_idle_s` and nothing of it runs."""
        while True:
            await asyncio.sleep(max(0.0, self._active_at + self._idle_s - time.monotonic()))
            if any(not o.done for o in self._owners.values()) or self._resumes:
                self._active_at = time.monotonic()   # a running request keeps the stream alive
            elif time.monotonic() - self._active_at >= self._idle_s:
                reader.cancel()
                self._out.put_nowait(DeadlineExceeded(
                    f"this Session stream sent nothing for {self._idle_s:g} s with no request running (the "
                    "front-end's security.session_idle_timeout_s); open a new stream, and send Open with the "
                    "session_id from Opened to continue the same session"))
                return

    def _emit(self, message: pb.ServerMessage) -> None:
        self._out.put_nowait(message)

    def _deliver(self, event) -> None:
        """A request owner's sink: its event goes onto this stream (rendered when the writer takes it)."""
        self._out.put(event)

    async def _read(self, request_iterator) -> None:
        try:
            async for message in request_iterator:
                await self._handle(message)
            for owner in list(self._owners.values()):  # half-closed: let running requests finish
                await owner.wait()
            if self._resumes:
                await asyncio.wait(set(self._resumes))
        finally:
            self._out.put_nowait(_END)

    async def _handle(self, message) -> None:
        arrival = time.time()
        self._active_at = time.monotonic()
        if isinstance(message, Undecodable):
            self._emit(request_error("", message.error()))
            return
        kind = message.WhichOneof("kind")
        request_id = document_id = ""
        try:
            if kind == "open":
                await self._open(message.open)
            elif kind in ("complete", "edit"):
                request = getattr(message, kind)
                request_id = request.request_id
                request_id = request_id_of(request, current_tenant())
                await self._start(request, request_id, arrival)
            elif kind == "interrupt":
                request_id = message.interrupt.request_id
                await self._interrupt(request_id)
            elif kind == "redirect":
                await self._redirect(message.redirect, arrival)
            elif kind == "resume":
                request_id = message.resume.request_id
                self._resume(message.resume)
            elif kind in ("open_document", "edit_document"):
                document_id = getattr(message, kind).document_id
                documents = await self._documents()
                change = documents.open if kind == "open_document" else documents.edit
                self._emit(pb.ServerMessage(document=await change(getattr(message, kind))))
            else:
                raise InvalidArgument("empty ClientMessage: set one of open, complete, edit, interrupt, redirect, "
                                      "resume, open_document, edit_document")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed request never ends the stream
            self._emit(request_error(request_id, exc, document_id=document_id))

    async def _open(self, open_msg: pb.Open) -> None:
        store = self._servicer.store
        await self._servicer.check_rate()
        check_model_name(open_msg.model)
        if open_msg.session_id:
            check_request_id(open_msg.session_id, field="session_id")
            session = await store.get_session(open_msg.session_id)
            if session is None or session.tenant != current_tenant():  # another tenant's looks unknown
                raise NotFound(f"session {open_msg.session_id!r} is unknown or expired; send Open with an empty "
                               "session_id to start a new one")
            if open_msg.model and open_msg.model != session.model:
                session = SessionRecord(**{**session.__dict__, "model": open_msg.model})
        else:
            session = SessionRecord(session_id=new_id("s"), model=open_msg.model, client=open_msg.client[:256],
                                    created_unix_s=time.time(), tenant=current_tenant())
        if session.model:
            await self._servicer.pool.pick(model=session.model)  # unknown model -> NOT_FOUND now
        if not open_msg.session_id:
            await self._count_session(session)
        await store.put_session(session)
        self._session = session
        self._emit(pb.ServerMessage(opened=await self._servicer.opened(session)))

    async def _ensure_session(self) -> SessionRecord:
        if self._session is None:  # implicit anonymous session
            session = SessionRecord(session_id=new_id("s"), created_unix_s=time.time(), tenant=current_tenant())
            await self._count_session(session)
            self._session = session
            await self._servicer.store.put_session(self._session)
        return self._session

    async def _count_session(self, session: SessionRecord) -> None:
        """RESOURCE_EXHAUSTED when the tenant already has its limit of live sessions."""
        if self._servicer.guard is not None:
            await self._servicer.guard.sessions.add(session.tenant, session.session_id)

    async def _documents(self) -> SessionDocuments:
        """This stream's documents (of its session, which a reopen on another worker finds in Redis)."""
        session = await self._ensure_session()
        if self._docs is None or self._docs_session != session.session_id:
            self._docs = SessionDocuments(self._servicer.document_store, session_id=session.session_id,
                                          tenant=session.tenant, session_key=self._servicer.store.session_key(
                                              session.session_id))
            self._docs_session = session.session_id
        return self._docs

    async def _start(self, request, request_id: str, arrival: float) -> None:
        await self._ensure_session()

        owner, self._session = await self._servicer.start_request(
            request, request_id=request_id, session=self._session, sink=self._deliver, arrival_unix_s=arrival,
            documents=await self._documents() if names_documents(request) else None, outbox=self._out)
        # Keep only running owners (the stream cancels them if the client disconnects).
        self._owners = {rid: o for rid, o in self._owners.items() if not o.done}
        self._owners[request_id] = owner
        if self._context is not None and self._context.done():  # the call ended while this one started
            owner.cancel_soon()

    def _resume(self, resume: pb.ResumeRequest) -> None:
        """Replay and follow a request from the journal into this stream, beside its other requests."""
        if self._servicer.resumer is None:
            from flint.frontend.servicer import RESUME_DISABLED

            self._emit(pb.ServerMessage(error=pb.RequestError(
                request_id=resume.request_id, code=code_number(grpc.StatusCode.UNIMPLEMENTED),
                message=RESUME_DISABLED)))
            return

        tenant = current_tenant()

        async def follow() -> None:
            try:
                request_id = scope_request_id(check_request_id(resume.request_id), tenant)
                await self._servicer.check_rate()
                with self._servicer.hold("resume"):
                    async for event in self._servicer.resumer.resume(request_id, resume.last_seq, tenant):
                        self._deliver(event)
                        await self._out.room(event.request_id)   # a slow reader slows the replay and takeover
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - becomes this request's RequestError
                self._emit(request_error(resume.request_id, exc))

        task = asyncio.create_task(follow(), name=f"resume {resume.request_id}")
        self._resumes.add(task)
        task.add_done_callback(self._resumes.discard)

    async def _interrupt(self, request_id: str) -> None:
        if not request_id:
            raise InvalidArgument("interrupt.request_id is empty: pass the id from the Accepted message")
        await self._servicer.check_rate()
        result = await self._servicer.interrupt(request_id)
        self._emit(pb.ServerMessage(interrupted=pb.InterruptResponse(
            request_id=request_id, was_running=result.was_running, last_seq=result.last_seq)))

    async def _redirect(self, redirect: pb.Redirect, arrival: float) -> None:
        which = redirect.WhichOneof("request")
        if which is None:
            raise InvalidArgument("redirect has no new request: set redirect.complete or redirect.edit")
        try:
            await self._interrupt(redirect.interrupt_request_id)
        except FlintError as exc:  # the old request is unknown or already gone: still start the new one
            self._emit(request_error(redirect.interrupt_request_id, exc))
        request = getattr(redirect, which)
        request_id = request.request_id
        try:
            request_id = request_id_of(request, current_tenant())
            await self._start(request, request_id, arrival)
        except FlintError as exc:
            self._emit(request_error(request_id, exc))
