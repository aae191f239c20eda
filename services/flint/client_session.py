"""`FlintClient.session()`: one Session stream with interleaved requests, interrupt and redirect.

    async with client.session() as session:
        async for message in session.complete("def f(", max_tokens=32): ...
        ack = await session.interrupt(request_id)
        async for message in session.redirect(old_id, "def g(", max_tokens=32): ...

Documents (send the file once, then only edits; completions name a cursor):
        doc = await session.open_document("app.py", text, path="app.py")
        await doc.replace(offset, offset, "x")          # code-point offsets; sent as an LSP-style edit
        async for message in doc.complete(offset + 1, max_tokens=32): ...
    or the wire-level calls: open_document / edit_document (futures of the new version) and
    complete_at(document_id, version, line, character). Edits and completions may be pipelined: the
    stream keeps their order, so `doc.replace(...)` need not be awaited before `doc.complete(...)`.

When the stream breaks (front-end worker gone), the session reconnects to the
next address, reopens the same session id and sends Resume(request id, last
seq) for every request still running, so each caller still sees every seq
exactly once. When the front-end ends an idle stream (nothing sent for its
`session_idle_timeout_s`, nothing running), the next call opens a new stream
on the same session id.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from flint.client import _Tracker, context_files, new_request_id, sampling
from flint.errors import FlintError, Unavailable
from flint.grpc_status import error_of, from_rpc_error
from flint.v1 import flint_pb2 as pb


class ClientSession:
    def __init__(self, client, *, session_id: str = "", model: str = "", client_name: str = "flint.client"):
        self._client = client
        self.session_id = session_id
        self._model = model
        self._client_name = client_name
        self._outbox: asyncio.Queue | None = None
        self._reader: asyncio.Task | None = None
        self._requests: dict[str, tuple[_Tracker, asyncio.Queue]] = {}
        self._interrupts: dict[str, asyncio.Future] = {}
        self._opened: asyncio.Future | None = None
        self._doc_waiters: dict[str, list[asyncio.Future]] = {}   # document id -> futures, in send order
        self.reconnects = 0
        self._idle_ended = False     # the server ended the stream as idle: the next call opens a new one

    async def __aenter__(self) -> "ClientSession":
        await self._connect()
        return self

    async def __aexit__(self, *exc_info) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader

    async def _connect(self) -> None:
        self._start_stream()
        self.session_id = (await self._opened).session_id

    def _start_stream(self, *, resume: bool = True) -> None:
        self._outbox = asyncio.Queue()
        self._opened = asyncio.get_running_loop().create_future()
        outbox = self._outbox

        async def requests():
            while True:
                yield await outbox.get()

        call = self._client.stub.Session(requests(), metadata=self._client._metadata)
        outbox.put_nowait(pb.ClientMessage(open=pb.Open(session_id=self.session_id, model=self._model,
                                                        client=self._client_name)))
        for request_id, (tracker, _) in self._requests.items() if resume else ():  # after a break: pick up
            outbox.put_nowait(pb.ClientMessage(resume=pb.ResumeRequest(request_id=request_id,
                                                                       last_seq=tracker.last_seq)))
        self._reader = asyncio.create_task(self._read(call), name="flint session reader")

    def _send(self, message: pb.ClientMessage) -> None:
        if self._idle_ended:
            self._idle_ended = False
            self._start_stream(resume=False)   # its Open (same session id) goes first; nothing ran meanwhile
        self._outbox.put_nowait(message)

    async def _read(self, call) -> None:
        try:
            async for message in call:
                self._dispatch(message)
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err, peer=self._client.address)
            if (err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "session_idle_timeout_s" in (err.details() or "")
                    and not self._requests and self._opened.done()):
                self._idle_ended = True
                return
            if error.retryable and (self._requests or not self._opened.done()):
                self.reconnects += 1
                self._client._fail_over()
                await asyncio.sleep(self._client.retry.delay_s(0, error.retry_after_ms))
                asyncio.ensure_future(self._connect())
                return
            self._fail_all(error)
        finally:
            call.cancel()

    def _fail_all(self, error: FlintError) -> None:
        if not self._opened.done():
            self._opened.set_exception(error)
        for _, queue in self._requests.values():
            queue.put_nowait(error)
        for future in [*self._interrupts.values(), *(f for fs in self._doc_waiters.values() for f in fs)]:
            if not future.done():
                future.set_exception(error)

    def _dispatch(self, message: pb.ServerMessage) -> None:
        kind = message.WhichOneof("kind")
        if kind == "opened":
            if not self._opened.done():
                self._opened.set_result(message.opened)
            return
        if kind == "interrupted":
            future = self._interrupts.pop(message.interrupted.request_id, None)
            if future is not None and not future.done():
                future.set_result(message.interrupted)
            return
        if kind == "document" or (kind == "error" and message.error.document_id and not message.error.request_id):
            document_id = message.document.document_id if kind == "document" else message.error.document_id
            waiters = self._doc_waiters.get(document_id)
            if waiters:
                future = waiters.pop(0)
                if not future.done():
                    if kind == "document":
                        future.set_result(message.document.version)
                    else:
                        future.set_exception(error_of(message.error))
            return
        request_id = getattr(message, kind).request_id
        if kind == "error" and request_id in self._interrupts and request_id not in self._requests:
            self._interrupts.pop(request_id).set_exception(error_of(message.error))
            return
        entry = self._requests.get(request_id)
        if entry is not None:
            entry[1].put_nowait(message)

    async def _run(self, message: pb.ClientMessage, request) -> object:
        tracker, queue = _Tracker(request.request_id, own_id=True), asyncio.Queue()
        self._requests[request.request_id] = (tracker, queue)
        self._send(message)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, FlintError):
                    raise item
                if tracker.accept(item):
                    yield item
                if tracker.done:
                    return
        finally:
            self._requests.pop(request.request_id, None)

    @staticmethod
    def _complete_request(prefix: str, suffix: str, *, path: str = "", context=(), model: str = "",
                          request_id: str = "", sampling_params: pb.Sampling | None = None,
                          priority: int = pb.PRIORITY_INTERACTIVE, **sampling_kwargs) -> pb.CompleteRequest:
        return pb.CompleteRequest(request_id=request_id or new_request_id(), prefix=prefix, suffix=suffix,
                                  path=path, context=context_files(context), model=model, priority=priority,
                                  sampling=sampling_params or sampling(**sampling_kwargs))

    def complete(self, prefix: str, suffix: str = "", **kwargs):
        """Stream a completion on this session (same keyword arguments as FlintClient.complete)."""
        request = self._complete_request(prefix, suffix, **kwargs)
        return self._run(pb.ClientMessage(complete=request), request)

    def edit(self, code: str, instruction: str, *, prefix: str = "", suffix: str = "", path: str = "",
             request_id: str = "", **sampling_kwargs):
        request = pb.EditRequest(request_id=request_id or new_request_id(), code=code, instruction=instruction,
                                 prefix=prefix, suffix=suffix, path=path, sampling=sampling(**sampling_kwargs))
        return self._run(pb.ClientMessage(edit=request), request)

    def redirect(self, interrupt_request_id: str, prefix: str, suffix: str = "", **kwargs):
        """Stop `interrupt_request_id` and stream a new completion in one message (reuses its KV prefix)."""
        request = self._complete_request(prefix, suffix, **kwargs)
        return self._run(pb.ClientMessage(redirect=pb.Redirect(interrupt_request_id=interrupt_request_id,
                                                               complete=request)), request)

    # ------------------------------------------------------------ documents
    def _document_call(self, document_id: str, message: pb.ClientMessage) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._doc_waiters.setdefault(document_id, []).append(future)
        self._send(message)
        return future

    def open_document_message(self, document_id: str, text: str, *, path: str = "", version: int = 1,
                              encoding: str = "utf-16") -> asyncio.Future:
        """Send OpenDocument; the future resolves to the server's version."""
        enc = pb.POSITION_ENCODING_UTF8 if encoding == "utf-8" else pb.POSITION_ENCODING_UTF16
        return self._document_call(document_id, pb.ClientMessage(open_document=pb.OpenDocument(
            document_id=document_id, path=path, text=text, version=version, position_encoding=enc)))

    def edit_document(self, document_id: str, version: int, edits) -> asyncio.Future:
        """Send EditDocument (version -> version + 1); `edits` are ((line, char), (line, char), text)."""
        changes = [pb.TextEdit(range=pb.Range(start=pb.Position(line=a[0], character=a[1]),
                                              end=pb.Position(line=b[0], character=b[1])), text=t)
                   for a, b, t in edits]
        return self._document_call(document_id, pb.ClientMessage(edit_document=pb.EditDocument(
            document_id=document_id, version=version, edits=changes)))

    def complete_at(self, document_id: str, version: int, line: int, character: int, *,
                    context_documents: tuple[str, ...] = (), **kwargs):
        """Stream a completion at a cursor of an open document (same keywords as complete)."""
        request = self._complete_request("", "", **kwargs)
        request.document.CopyFrom(pb.DocumentCursor(document_id=document_id, version=version,
                                                    cursor=pb.Position(line=line, character=character)))
        request.context_documents.extend(pb.DocumentRef(document_id=d) for d in context_documents)
        return self._run(pb.ClientMessage(complete=request), request)

    async def open_document(self, document_id: str, text: str, *, path: str = "", version: int = 1,
                            encoding: str = "utf-16") -> "Document":
        """Open a document and return a handle that tracks its text and version."""
        await self.open_document_message(document_id, text, path=path, version=version, encoding=encoding)
        return Document(self, document_id, text, version, encoding)

    async def interrupt(self, request_id: str, timeout_s: float = 10.0) -> pb.InterruptResponse:
        future = asyncio.get_running_loop().create_future()
        self._interrupts[request_id] = future
        self._send(pb.ClientMessage(interrupt=pb.InterruptRequest(request_id=request_id)))
        try:
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise Unavailable(f"no interrupt acknowledgement for {request_id!r} within {timeout_s:g} s") from None
        finally:
            self._interrupts.pop(request_id, None)


class Document:
    """An open document on a ClientSession: edit and complete by code-point offsets into its text."""

    def __init__(self, session: ClientSession, document_id: str, text: str, version: int, encoding: str):
        self.session = session
        self.document_id = document_id
        self.text = text
        self.version = version
        self._encoding = encoding

    def position(self, offset: int) -> tuple[int, int]:
        """(line, character) of a code-point offset, as the server counts them."""
        head = self.text[:offset]
        line_start = max(head.rfind("\n"), head.rfind("\r")) + 1
        line = head.count("\n") + head.count("\r") - head.count("\r\n")
        column = head[line_start:]
        units = len(column.encode("utf-16-le")) // 2 if self._encoding == "utf-16" else len(column.encode())
        return line, units

    def replace(self, start: int, end: int, text: str) -> asyncio.Future:
        """Replace text[start:end]; the local copy and version move now, the future is the server's answer."""
        future = self.session.edit_document(self.document_id, self.version,
                                            [(self.position(start), self.position(end), text)])
        self.text = self.text[:start] + text + self.text[end:]
        self.version += 1
        return future

    def complete(self, cursor: int, **kwargs):
        line, character = self.position(cursor)
        return self.session.complete_at(self.document_id, self.version, line, character, **kwargs)
