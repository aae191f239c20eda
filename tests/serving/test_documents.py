"""Documents in sessions: edits in Redis, positions, versions, limits, and the replica's token cache.

Real Valkey (tests/support/services.py) and a real tokenizer; the property test checks that a
document's prompt tokens after any edit sequence equal the full-text request's.
"""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flint.docstore import DocumentLimits, DocumentStore
from flint.engine.fim import build_prompt
from flint.engine.tokenizer import Tokenizer
from flint.engine.types import GenerateRequest
from flint.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from flint.frontend.documents import SessionDocuments
from flint.replica.documents import DocumentTokens
from flint.v1 import flint_pb2 as pb

TEXT = "import os\n\n\ndef area(r):\n    return 3.14 * r ** 2  # é中😀\n\n\nprint(area(2))\n"


def _open(doc_id="a.py", text=TEXT, version=1, **kw):
    return pb.OpenDocument(document_id=doc_id, path=doc_id, text=text, version=version, **kw)


def _edit(doc_id, version, sl, sc, el, ec, text):
    return pb.EditDocument(document_id=doc_id, version=version, edits=[pb.TextEdit(
        range=pb.Range(start=pb.Position(line=sl, character=sc), end=pb.Position(line=el, character=ec)),
        text=text)])


def _complete(doc_id, version, line, character, **kw):
    return pb.CompleteRequest(document=pb.DocumentCursor(
        document_id=doc_id, version=version, cursor=pb.Position(line=line, character=character)), **kw)


class _Env:
    def __init__(self, url: str, prefix: str, limits: DocumentLimits | None = None):
        self.redis = aioredis.Redis.from_url(url)
        self.store = DocumentStore(self.redis, prefix, ttl_s=60, limits=limits)

    def worker(self, session="s1", tenant="t1") -> SessionDocuments:
        return SessionDocuments(self.store, session_id=session, tenant=tenant, session_key=f"x:session:{session}")

    async def close(self):
        await self.redis.aclose()


@pytest.fixture(scope="module")
def tok(demo_checkpoint) -> Tokenizer:
    return Tokenizer.from_dir(demo_checkpoint)


async def _prompt_ids(replica: DocumentTokens, tok: Tokenizer, docs: SessionDocuments, msg) -> tuple[int, ...]:
    current, context = await docs.engine_inputs(msg)
    req = await replica.resolve(GenerateRequest(request_id="r"), current, context)
    return build_prompt(tok, req, layout="psm", suffix_window_tokens=0).token_ids


def _full_text_ids(tok, text, cursor, path="a.py"):
    return build_prompt(tok, GenerateRequest(request_id="r", prefix=text[:cursor], suffix=text[cursor:], path=path),
                        layout="psm", suffix_window_tokens=0).token_ids


PIECES = st.sampled_from(["x", "_", " ", "    ", "\n", "(", ")", ":", "é", "😀", "'", "0", "def ", "\r\n"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3), st.lists(PIECES, max_size=4).map("".join),
                                st.floats(0, 1)), min_size=1, max_size=12))
def test_document_edits_give_the_same_prompt_tokens_as_the_full_text_request(valkey_url, tok, steps):
    async def run():
        env = _Env(valkey_url, "prop")
        docs, replica = env.worker(), DocumentTokens(tok, env.store)
        await docs.open(_open())
        text, version = TEXT, 1
        try:
            for at, length, repl, cursor_at in steps:
                start = _between_lines(text, int(at * len(text)))
                end = _between_lines(text, min(len(text), start + length))
                u16 = _DocPositions(text)
                await docs.edit(_edit("a.py", version, *u16.pos(start), *u16.pos(end), repl))
                text, version = text[:start] + repl + text[end:], version + 1
                cursor = _between_lines(text, int(cursor_at * len(text)))
                got = await _prompt_ids(replica, tok, docs, _complete("a.py", version, *_DocPositions(text).pos(cursor)))
                assert got == _full_text_ids(tok, text, cursor)
        finally:
            await env.close()

    asyncio.run(run())


def _between_lines(text: str, offset: int) -> int:
    """LSP positions cannot point between the "\r" and "\n" of one line end."""
    return offset + 1 if 0 < offset < len(text) and text[offset - 1:offset + 1] == "\r\n" else offset


class _DocPositions:
    """LSP UTF-16 position of a code-point offset, computed the slow obvious way."""

    def __init__(self, text):
        self.text = text

    def pos(self, offset):
        head = self.text[:offset].replace("\r\n", "\n").replace("\r", "\n")
        line = head.count("\n")
        last = self.text[:offset]
        cut = max(last.rfind("\n"), last.rfind("\r"))
        col = last[cut + 1:]
        return line, len(col.encode("utf-16-le")) // 2


async def test_stale_versions_get_failed_precondition_with_the_servers_version(valkey_url, tok):
    env = _Env(valkey_url, "stale")
    try:
        docs = env.worker()
        assert (await docs.open(_open(version=7))).version == 7
        assert (await docs.edit(_edit("a.py", 7, 0, 0, 0, 0, "#"))).version == 8
        with pytest.raises(FailedPrecondition, match="at version 8 on the server, not 7") as err:
            await docs.edit(_edit("a.py", 7, 0, 0, 0, 0, "#"))
        assert err.value.document_version == 8
        with pytest.raises(FailedPrecondition) as err:
            await env.worker().engine_inputs(_complete("a.py", 9, 0, 0))   # another worker: read from Redis
        assert err.value.document_version == 8
        with pytest.raises(NotFound, match="not open in this session"):
            await docs.edit(_edit("b.py", 1, 0, 0, 0, 0, "#"))
        with pytest.raises(InvalidArgument, match="past the end of line 0"):
            await docs.edit(_edit("a.py", 8, 0, 99, 0, 99, "#"))
        with pytest.raises(InvalidArgument, match="also carries prefix/suffix"):
            await docs.engine_inputs(_complete("a.py", 8, 0, 0, prefix="x"))
    finally:
        await env.close()


async def test_another_worker_continues_from_redis_and_another_replica_loads_the_document(valkey_url, tok):
    env = _Env(valkey_url, "takeover")
    try:
        first, replica = env.worker(), DocumentTokens(tok, env.store)
        await first.open(_open())
        await first.edit(_edit("a.py", 1, 3, 0, 3, 0, "# one\n"))
        await _prompt_ids(replica, tok, first, _complete("a.py", 2, 3, 0))
        del first                                               # the worker dies between two keystrokes
        second, fresh_replica = env.worker(), DocumentTokens(tok, env.store)
        await second.edit(_edit("a.py", 2, 4, 0, 4, 0, "# two\n"))
        text = TEXT.replace("\ndef", "\n# one\n# two\ndef", 1)
        for r in (replica, fresh_replica):      # the old replica applies the logged edit; a new one loads
            assert await _prompt_ids(r, tok, second, _complete("a.py", 3, 5, 0)) == _full_text_ids(
                tok, text, text.index("def area"))
        assert replica.stats["incremental"] == 1 and fresh_replica.stats["loaded"] == 1
    finally:
        await env.close()


async def test_keystrokes_send_the_edit_not_the_text_and_hit_the_replica_cache(valkey_url, tok):
    env = _Env(valkey_url, "wire", DocumentLimits(compact_every_edits=4))
    try:
        docs, replica = env.worker(), DocumentTokens(tok, env.store)
        big = TEXT * 200
        await docs.open(_open(text=big))
        await _prompt_ids(replica, tok, docs, _complete("a.py", 1, 100, 0))
        for v in range(1, 10):
            await docs.edit(_edit("a.py", v, 100, v - 1, 100, v - 1, "z"))
            current, _ = await docs.engine_inputs(_complete("a.py", v + 1, 100, v))
            assert current.ByteSize() < 100 and len(current.edits) == 1
            await replica.resolve(GenerateRequest(request_id="r"), current)
        assert replica.stats == {"hit": 0, "incremental": 9, "loaded": 1}
        assert (await env.store.load(docs._docs["a.py"].key)).text == docs._docs["a.py"].doc.text  # after compactions
        assert await env.redis.llen(docs._docs["a.py"].key + ":log") < 4
    finally:
        await env.close()


async def test_document_size_and_count_are_bounded_per_tenant(valkey_url):
    env = _Env(valkey_url, "limits", DocumentLimits(max_document_chars=100, max_documents_per_tenant=2))
    try:
        docs = env.worker()
        with pytest.raises(ResourceExhausted, match="101 characters; the limit is 100"):
            await docs.open(_open(text="x" * 101))
        await docs.open(_open("a.py", "a"))
        await docs.open(_open("b.py", "b"))
        await docs.open(_open("a.py", "again"))                       # reopening is not a new document
        with pytest.raises(ResourceExhausted, match="2 documents open"):
            await docs.open(_open("c.py", "c"))
        await env.worker(session="s2", tenant="t2").open(_open("c.py", "c"))   # another tenant's count
        with pytest.raises(ResourceExhausted, match="would be 101 characters"):
            await docs.edit(_edit("a.py", 1, 0, 0, 0, 0, "y" * 96))
        with pytest.raises(InvalidArgument, match="document_id"):
            await docs.open(_open("a:b"))
    finally:
        await env.close()
