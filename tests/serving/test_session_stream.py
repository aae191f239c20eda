"""The bidirectional Session stream: FIM and edit requests, redirect, per-request errors."""

import asyncio

import grpc
from support.services import SEEDED, collect, delta_text, long_edit

from flint.v1 import flint_pb2 as pb


class Conversation:
    """Drive a Session stream: send client messages, read server messages."""

    def __init__(self, stub):
        self._outgoing: asyncio.Queue = asyncio.Queue()
        self.call = stub.Session(self._requests())

    async def _requests(self):
        while (message := await self._outgoing.get()) is not None:
            yield message

    def send(self, **kind) -> None:
        self._outgoing.put_nowait(pb.ClientMessage(**kind))

    def close(self) -> None:
        self._outgoing.put_nowait(None)

    async def finish(self) -> grpc.StatusCode:
        """Half-close, read what is left, return the stream's status."""
        self.close()
        while await self.read() is not grpc.aio.EOF:
            pass
        return await self.call.code()

    async def read(self) -> pb.ServerMessage:
        return await asyncio.wait_for(self.call.read(), 60)

    async def until_final(self, request_id: str) -> list[pb.ServerMessage]:
        """Messages of `request_id` up to and including its final (or error)."""
        out = []
        while True:
            message = await self.read()
            kind = message.WhichOneof("kind")
            if getattr(getattr(message, kind), "request_id", "") != request_id:
                continue
            out.append(message)
            if kind in ("final", "error"):
                return out


async def test_session_completes_fim_and_edit_and_deltas_concatenate_to_final_text(flint_stub):
    conv = Conversation(flint_stub)
    conv.send(open=pb.Open(client="pytest"))
    opened = (await conv.read()).opened
    assert opened.session_id and opened.worker_id == "worker-a" and opened.max_context_tokens > 0

    fim = pb.CompleteRequest(request_id="sess-fim", prefix="def square(x):\n    return ", suffix="\n",
                             sampling=pb.Sampling(max_tokens=40, **SEEDED))
    conv.send(complete=fim)
    messages = await conv.until_final("sess-fim")
    deltas = [m.delta for m in messages if m.WhichOneof("kind") == "delta"]
    assert deltas
    assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
    assert messages[-1].final.seq == len(deltas) + 1
    # The same greedy request over the Complete RPC gives the same text.
    fim.request_id = ""
    assert delta_text(messages) == delta_text(await collect(flint_stub.Complete(fim)))
    assert sum(d.token_count for d in deltas) <= messages[-1].final.completion_tokens

    conv.send(edit=pb.EditRequest(request_id="sess-edit", code="a=1\n", instruction="add spaces",
                                  sampling=pb.Sampling(max_tokens=6)))
    edit_messages = await conv.until_final("sess-edit")
    assert [m.WhichOneof("kind") for m in edit_messages][:2] == ["accepted", "delta"]
    edit_deltas = [m.delta for m in edit_messages if m.WhichOneof("kind") == "delta"]
    assert [d.seq for d in edit_deltas] == list(range(1, len(edit_deltas) + 1))
    assert edit_messages[-1].final.seq == len(edit_deltas) + 1
    assert await conv.finish() == grpc.StatusCode.OK


async def test_request_error_does_not_end_the_session(flint_stub):
    conv = Conversation(flint_stub)
    conv.send(complete=pb.CompleteRequest(request_id="bad-temp", prefix="x",
                                          sampling=pb.Sampling(temperature=7.0)))
    error = (await conv.until_final("bad-temp"))[-1].error
    assert error.code == 3 and "[0, 2]" in error.message and not error.retryable
    conv.send(complete=pb.CompleteRequest(request_id="after-error", prefix="y = ", sampling=pb.Sampling(max_tokens=3)))
    assert (await conv.until_final("after-error"))[-1].WhichOneof("kind") == "final"
    assert await conv.finish() == grpc.StatusCode.OK


async def test_a_request_id_in_use_on_the_same_stream_is_refused_and_the_running_one_still_finishes(flint_stub):
    # The refusal comes from the new request's owner (its claim), which the stream tracks beside the running
    # one: a half-close still waits for the request that holds the id, so its Final arrives before the end.
    # (The held request runs long enough that the second one's claim meets it running on a loaded machine
    # too: at 200 tokens it once finished first in a full CI run, and the refusal then came after its Final.)
    conv = Conversation(flint_stub)
    conv.send(edit=long_edit("held", 900))
    assert [(await conv.read()).WhichOneof("kind") for _ in range(2)] == ["accepted", "delta"]
    conv.send(complete=pb.CompleteRequest(request_id="held", prefix="x", sampling=pb.Sampling(max_tokens=2)))
    conv.close()
    messages = []
    while (message := await conv.read()) is not grpc.aio.EOF:
        messages.append(message)
    errors = [m.error for m in messages if m.WhichOneof("kind") == "error"]
    assert len(errors) == 1 and errors[0].request_id == "held" and "already in use" in errors[0].message
    assert messages[-1].WhichOneof("kind") == "final" and messages[-1].final.request_id == "held"
    assert await conv.call.code() == grpc.StatusCode.OK


async def test_redirect_interrupts_the_old_request_and_starts_the_new_one(flint_stub):
    conv = Conversation(flint_stub)
    conv.send(edit=long_edit("old"))
    assert [(await conv.read()).WhichOneof("kind") for _ in range(2)] == ["accepted", "delta"]
    conv.send(redirect=pb.Redirect(interrupt_request_id="old", complete=pb.CompleteRequest(
        request_id="new", prefix="class A:\n    def", sampling=pb.Sampling(max_tokens=4))))
    old, ack, new = [], None, []
    while not new or new[-1].WhichOneof("kind") != "final":
        message = await conv.read()
        kind = message.WhichOneof("kind")
        if kind == "interrupted":
            ack = message.interrupted
        elif getattr(message, kind).request_id == "old":
            assert ack is None, "no message of the old request after its acknowledgement"
            old.append(message)
        else:
            new.append(message)
    assert ack.request_id == "old" and ack.was_running
    assert old[-1].final.finish_reason == pb.FINISH_REASON_INTERRUPTED
    assert old[-1].final.seq == ack.last_seq + 1
    assert new[0].WhichOneof("kind") == "accepted"
    assert await conv.finish() == grpc.StatusCode.OK


async def test_invalid_utf8_message_gets_request_error_and_session_stays_open(frontend_workers):
    async with grpc.aio.insecure_channel(frontend_workers[0].address) as channel:
        session = channel.stream_stream("/flint.v1.Flint/Session", request_serializer=lambda b: b,
                                        response_deserializer=pb.ServerMessage.FromString)
        # ClientMessage.complete (field 2) holding CompleteRequest.prefix (field 2) = b"\xff\xfe".
        bad = bytes([0x12, 0x04, 0x12, 0x02, 0xFF, 0xFE])
        good = pb.ClientMessage(complete=pb.CompleteRequest(request_id="utf8-ok", prefix="z = ",
                                                            sampling=pb.Sampling(max_tokens=2))).SerializeToString()
        call = session(iter([bad, good]))
        messages = [m async for m in call]
    assert messages[0].error.code == 3 and "UTF-8" in messages[0].error.message
    assert messages[-1].final.request_id == "utf8-ok"
