"""A replica's per-document token cache: a keystroke re-tokenizes a window, not the document.

The front-end sends a document request as (Redis key, version, cursor) plus,
when it has them, the edits from the previous version (`base_version`). Here:
- the cached version is the one asked for: use its tokens;
- the cache holds an older version: apply the edits sent (or read the
  missing ones from the document's log in Redis) with
  `IncrementalTokenizer.edit`, which re-encodes a verified window;
- nothing usable is cached (first request, another replica served the
  previous keystroke, evicted): read the document from Redis and encode it
  whole, off the event loop.
The prompt's prefix and suffix ids then come from `IncrementalTokenizer.split`
at the cursor; they equal encoding the text (tests/serving/test_documents.py).

The cache is bounded (`max_documents`, least recently used out) and counted
in `stats` and the `flint_document_tokens_total{how}` metric (hit, incremental,
loaded, full_retokenize: an edit whose window could not be proven stable).

Public API (stable):
    DocumentTokens(tokenizer, store, *, max_documents=64)
    await .resolve(request: GenerateRequest, document, context_documents) -> GenerateRequest
    .stats: dict[str, int]
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict

from flint.docstore import DocumentStore
from flint.doctext import Edit
from flint.engine.incremental import IncrementalTokenizer, TokenizedText
from flint.engine.types import ContextFile, GenerateRequest
from flint.errors import InvalidArgument
from flint.observability.metrics import metrics


class DocumentTokens:
    def __init__(self, tokenizer, store: DocumentStore, *, max_documents: int = 64):
        self._inc = IncrementalTokenizer(tokenizer)
        self._store = store
        self._max = max_documents
        self._docs: OrderedDict[str, tuple[int, TokenizedText]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self.stats = {"hit": 0, "incremental": 0, "loaded": 0}

    @property
    def full_retokenizations(self) -> int:
        return self._inc.stats.full

    async def resolve(self, request: GenerateRequest, document, context_documents=()) -> GenerateRequest:
        """`request` with its prompt taken from documents: prefix/suffix ids at the cursor, context texts."""
        context = list(request.context)
        for ref in context_documents:
            doc = await self._tokens(ref)
            context.append(ContextFile(path=ref.path, content=doc.text))
        if document is None or not document.key:
            return dataclasses.replace(request, context=tuple(context))
        doc = await self._tokens(document)
        if document.cursor > len(doc.text):
            raise InvalidArgument(f"cursor {document.cursor} is past the end of the document "
                                  f"({len(doc.text)} characters)")
        prefix_ids, suffix_ids = self._inc.split_ids(doc, int(document.cursor))   # arrays, O(1) Python objects
        return dataclasses.replace(request, prefix="", suffix="", path=request.path or document.path,
                                   context=tuple(context), prefix_ids=prefix_ids, suffix_ids=suffix_ids)

    async def _tokens(self, ref) -> TokenizedText:
        lock = self._locks.setdefault(ref.key, asyncio.Lock())
        async with lock:     # one keystroke of a document at a time: the next builds on this one's version
            doc = await self._tokens_locked(ref)
        self._docs[ref.key] = (ref.version, doc)
        self._docs.move_to_end(ref.key)
        while len(self._docs) > self._max:
            old, _ = self._docs.popitem(last=False)
            self._locks.pop(old, None)
        return doc

    async def _tokens_locked(self, ref) -> TokenizedText:
        cached = self._docs.get(ref.key)
        if cached is not None and cached[0] == ref.version:
            self._count("hit")
            return cached[1]
        if cached is not None and cached[0] < ref.version:
            edits: list[Edit] | None = None
            if ref.edits and ref.base_version == cached[0]:
                edits = [Edit(int(e.start), int(e.end), e.text) for e in ref.edits]
            else:
                edits = await self._store.edits(ref.key, cached[0], int(ref.version))
            if edits is not None:
                doc, full_before = cached[1], self._inc.stats.full
                for e in edits:
                    doc = self._inc.edit(doc, e.start, e.end, e.text)
                self._count("incremental")
                for _ in range(self._inc.stats.full - full_before):
                    self._count("full_retokenize")
                return doc
        stored = await self._store.load(ref.key, int(ref.version))
        self._count("loaded")
        return await asyncio.to_thread(self._inc.full, stored.text)

    def _count(self, how: str) -> None:
        self.stats[how] = self.stats.get(how, 0) + 1
        metrics().document_tokens.labels(how).inc()
