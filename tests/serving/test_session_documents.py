"""Documents on a real Session stream: open once, edit per keystroke, complete at a cursor.

Real front-end worker processes, Valkey and the engine replica (tests/support/services.py).
"""

from __future__ import annotations

import signal

import grpc
import pytest
from support.services import start_worker_process, stop_worker_process
from test_session_stream import Conversation

from flint.errors import FailedPrecondition
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

TEXT = "import os\n\n\ndef area(r):\n    return 3.14 * r ** 2\n\n\nprint(area(2))\n"


def _edit(version, line, character, text):
    pos = pb.Position(line=line, character=character)
    return pb.EditDocument(document_id="m.py", version=version,
                           edits=[pb.TextEdit(range=pb.Range(start=pos, end=pos), text=text)])


def _complete(request_id, version, line, character):
    return pb.CompleteRequest(request_id=request_id, sampling=pb.Sampling(max_tokens=1), document=pb.DocumentCursor(
        document_id="m.py", version=version, cursor=pb.Position(line=line, character=character)))


async def _prompt_tokens(conv, request_id) -> int:
    messages = await conv.until_final(request_id)
    assert messages[-1].WhichOneof("kind") == "final", messages[-1]
    return messages[-1].final.prompt_tokens


async def test_document_keystrokes_complete_like_full_text_and_stale_versions_fail(flint_stub):
    conv = Conversation(flint_stub)
    conv.send(open=pb.Open(client="pytest"))
    await conv.read()
    conv.send(open_document=pb.OpenDocument(document_id="m.py", path="m.py", text=TEXT, version=1))
    assert (await conv.read()).document.version == 1
    conv.send(edit_document=_edit(1, 4, 11, "0"))         # "    return 0 3.14 ..."
    assert (await conv.read()).document.version == 2
    conv.send(complete=_complete("doc-1", 2, 4, 12))
    document_tokens = await _prompt_tokens(conv, "doc-1")
    text = TEXT.replace("return ", "return 0", 1)
    cursor = text.index("return 0") + len("return 0")
    conv.send(complete=pb.CompleteRequest(request_id="full-1", prefix=text[:cursor], suffix=text[cursor:],
                                          path="m.py", sampling=pb.Sampling(max_tokens=1)))
    assert document_tokens == await _prompt_tokens(conv, "full-1")

    conv.send(edit_document=_edit(1, 0, 0, "#"))           # stale: the server holds version 2
    error = (await conv.read()).error
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert (error.document_id, error.document_version) == ("m.py", 2)
    conv.send(complete=_complete("doc-stale", 5, 0, 0))
    messages = await conv.until_final("doc-stale")
    assert messages[-1].error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert messages[-1].error.document_version == 2
    assert await conv.finish() == grpc.StatusCode.OK


async def test_unary_complete_naming_a_document_is_refused(flint_stub):
    call = flint_stub.Complete(_complete("", 1, 0, 0))
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "Session streams" in err.details()
    else:
        raise AssertionError("expected INVALID_ARGUMENT")


async def test_worker_killed_between_two_keystrokes_next_served_by_another_worker(valkey_url, frontend_workers):
    doomed = start_worker_process(valkey_url, "doc-doomed")
    try:
        async with grpc.aio.insecure_channel(doomed.address) as channel:
            conv = Conversation(flint_pb2_grpc.FlintStub(channel))
            conv.send(open=pb.Open(client="pytest"))
            session_id = (await conv.read()).opened.session_id
            conv.send(open_document=pb.OpenDocument(document_id="m.py", path="m.py", text=TEXT, version=1))
            await conv.read()
            conv.send(edit_document=_edit(1, 4, 11, "0"))
            await conv.read()
            conv.send(complete=_complete("kill-1", 2, 4, 12))
            await _prompt_tokens(conv, "kill-1")
            doomed.process.send_signal(signal.SIGKILL)          # between two keystrokes
            doomed.process.wait()
            conv.call.cancel()
    finally:
        stop_worker_process(doomed.process)
    async with grpc.aio.insecure_channel(frontend_workers[1].address) as channel:
        conv = Conversation(flint_pb2_grpc.FlintStub(channel))
        conv.send(open=pb.Open(session_id=session_id))
        assert (await conv.read()).opened.session_id == session_id
        conv.send(edit_document=_edit(2, 4, 12, "1"))          # version 2 -> 3, found in Redis
        assert (await conv.read()).document.version == 3
        conv.send(complete=_complete("kill-2", 3, 4, 13))
        document_tokens = await _prompt_tokens(conv, "kill-2")
        text = TEXT.replace("return ", "return 01", 1)
        cursor = text.index("return 01") + len("return 01")
        conv.send(complete=pb.CompleteRequest(request_id="kill-full", prefix=text[:cursor], suffix=text[cursor:],
                                              path="m.py", sampling=pb.Sampling(max_tokens=1)))
        assert document_tokens == await _prompt_tokens(conv, "kill-full")
        assert await conv.finish() == grpc.StatusCode.OK


async def test_client_document_api_types_keystrokes_that_match_the_full_text_path(frontend_workers):
    from flint.client import FlintClient

    async with FlintClient(frontend_workers[0].address) as client:
        async with client.session() as session:
            doc = await session.open_document("c.py", TEXT + "x = 'é😀'\n", path="c.py")
            cursor = doc.text.index("😀") + 1
            for char in "ab":
                doc.replace(cursor, cursor, char)                      # pipelined, not awaited
                cursor += 1
                finals = [m.final async for m in doc.complete(cursor, max_tokens=1) if m.WhichOneof("kind") == "final"]
            full = [m.final async for m in session.complete(doc.text[:cursor], doc.text[cursor:], path="c.py",
                                                            max_tokens=1) if m.WhichOneof("kind") == "final"]
            assert finals[0].prompt_tokens == full[0].prompt_tokens
            assert doc.version == 3
            with pytest.raises(FailedPrecondition) as err:
                await session.edit_document("c.py", 1, [((0, 0), (0, 0), "#")])
            assert err.value.document_version == 3
