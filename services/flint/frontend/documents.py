"""The documents of one Session stream, on the front-end worker: open, edit, and a completion's document.

The text lives in Redis (flint.docstore); this worker keeps a copy of each
document it has seen with its line index (flint.doctext) to check and convert
LSP positions to code-point offsets, which is what goes to Redis and to the
replica. Per keystroke: convert the edit's range, apply it to the copy,
append it to the document's log in Redis (one Lua call), and send the replica
(key, version, cursor) plus that edit, never the text. A stream that
reconnects to another worker, or a version this worker has not seen, loads
the document from Redis.

Public API (stable):
    SessionDocuments(store, *, session_id, tenant, session_key)
    await .open(msg: flint.v1.OpenDocument) -> flint.v1.DocumentVersion
    await .edit(msg: flint.v1.EditDocument) -> flint.v1.DocumentVersion
    await .engine_inputs(msg: flint.v1.CompleteRequest) -> (DocumentInput | None, [DocumentInput])
    await .fill(msg, engine_request)   (sets the internal request's document fields)
    names_documents(msg) -> bool
"""

from __future__ import annotations

from dataclasses import dataclass

from flint.docstore import DocumentStore, check_document_id, stale
from flint.doctext import ENCODINGS, DocText, Edit
from flint.errors import InvalidArgument
from flint.internal.v1 import engine_pb2 as ipb
from flint.v1 import flint_pb2 as pb

_ENCODING = {pb.POSITION_ENCODING_UNSPECIFIED: "utf-16", pb.POSITION_ENCODING_UTF16: "utf-16",
             pb.POSITION_ENCODING_UTF8: "utf-8"}   # unset = UTF-16, as LSP
MAX_CACHED_DOCUMENTS = 64   # per stream; more are read back from Redis when used


@dataclass
class _Copy:
    key: str
    version: int
    doc: DocText
    path: str
    last_edits: tuple[int, list[Edit]] | None = None   # (base version, edits) of the latest version


class SessionDocuments:
    def __init__(self, store: DocumentStore, *, session_id: str, tenant: str, session_key: str):
        self._store = store
        self._session_id = session_id
        self._tenant = tenant
        self._session_key = session_key
        self._docs: dict[str, _Copy] = {}

    async def open(self, msg: pb.OpenDocument) -> pb.DocumentVersion:
        check_document_id(msg.document_id)
        if msg.position_encoding not in _ENCODING:
            raise InvalidArgument(f"open_document.position_encoding {msg.position_encoding} is unknown; use "
                                  f"one of {', '.join(ENCODINGS)}")
        encoding = _ENCODING[msg.position_encoding]
        key = await self._store.open(session_id=self._session_id, tenant=self._tenant,
                                     document_id=msg.document_id, path=msg.path, text=msg.text,
                                     version=msg.version, encoding=encoding)
        self._remember(msg.document_id, _Copy(key, msg.version, DocText(msg.text, encoding), msg.path))
        return pb.DocumentVersion(document_id=msg.document_id, version=msg.version)

    async def edit(self, msg: pb.EditDocument) -> pb.DocumentVersion:
        copy = await self._copy(msg.document_id, msg.version)
        doc, edits = copy.doc, []
        for i, change in enumerate(msg.edits):
            start, end = (doc.offset(p.line, p.character) for p in (change.range.start, change.range.end))
            if end < start:
                raise InvalidArgument(f"edit_document.edits[{i}]: the range ends before it starts")
            doc = doc.apply(start, end, change.text)
            edits.append(Edit(start, end, change.text))
        self._store.check_size(len(doc.text), msg.document_id)
        version, log_length = await self._store.append_edits(
            copy.key, msg.version, edits, tenant=self._tenant, session_key=self._session_key)
        self._remember(msg.document_id, _Copy(copy.key, version, doc, copy.path, (msg.version, edits)))
        if log_length >= self._store.limits.compact_every_edits:
            await self._store.compact(copy.key, version, doc.text)
        return pb.DocumentVersion(document_id=msg.document_id, version=version)

    async def engine_inputs(self, msg: pb.CompleteRequest) -> tuple[ipb.DocumentInput | None, list]:
        """The replica's view of a completion's documents: references and the latest edits, no text."""
        current = None
        if msg.HasField("document"):
            if msg.prefix or msg.suffix:
                raise InvalidArgument("complete names a document and also carries prefix/suffix: send one or "
                                      "the other")
            cursor = msg.document
            copy = await self._copy(cursor.document_id, cursor.version)
            current = self._input(copy, copy.doc.offset(cursor.cursor.line, cursor.cursor.character))
        context = []
        for ref in msg.context_documents:
            copy = await self._copy(ref.document_id, None)
            context.append(self._input(copy, 0))
        return current, context

    async def fill(self, msg, engine_request: ipb.GenerateRequest) -> None:
        """Point the internal request at the completion's documents (no-op for requests without any)."""
        if not names_documents(msg):
            return
        current, context = await self.engine_inputs(msg)
        if current is not None:
            engine_request.document.CopyFrom(current)
        engine_request.context_documents.extend(context)

    # ---- internals ----

    def _input(self, copy: _Copy, cursor: int) -> ipb.DocumentInput:
        out = ipb.DocumentInput(key=copy.key, version=copy.version, cursor=cursor, path=copy.path)
        if copy.last_edits is not None:
            out.base_version = copy.last_edits[0]
            out.edits.extend(ipb.DocumentEdit(start=e.start, end=e.end, text=e.text) for e in copy.last_edits[1])
        return out

    async def _copy(self, document_id: str, version: int | None) -> _Copy:
        check_document_id(document_id)
        copy = self._docs.get(document_id)
        if copy is not None and (version is None or copy.version == version):
            return copy
        key = self._store.key(self._session_id, document_id)
        stored = await self._store.load(key)   # NOT_FOUND when never opened (or expired)
        if version is not None and stored.version != version:
            raise stale(key, version, stored.version)
        copy = _Copy(key, stored.version, DocText(stored.text, stored.encoding), stored.path)
        self._remember(document_id, copy)
        return copy

    def _remember(self, document_id: str, copy: _Copy) -> None:
        self._docs.pop(document_id, None)
        self._docs[document_id] = copy
        while len(self._docs) > MAX_CACHED_DOCUMENTS:
            self._docs.pop(next(iter(self._docs)))


def names_documents(msg) -> bool:
    return isinstance(msg, pb.CompleteRequest) and (msg.HasField("document") or len(msg.context_documents) > 0)
