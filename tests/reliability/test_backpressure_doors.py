"""Backpressure through the other doors: the HTTP door, and a Session stream that resumes a request.

The rules are the Outbox's (flint.frontend.outbox): a client that does not read has its request's output
held, merged, up to the stream's and the worker's caps; then the request ends RESOURCE_EXHAUSTED, its
engine work stops, and what the client reads later is the start of the text followed by that status.
Meanwhile the worker serves everybody else.
"""

import asyncio
import json
import socket

import aiohttp
import grpc

from rel_support import eventually, open_session
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

STREAM_CAP = 1024                 # the smallest caps there are: the tiny test model reaches them in seconds
WORKER_CAP = 2 * STREAM_CAP
BUFFERS = {"max_buffered_bytes_per_stream": STREAM_CAP, "max_buffered_bytes_per_worker": WORKER_CAP}
# A gRPC client announcing a small HTTP/2 window: the server's writes wait for it after a few KB.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]


def engine_idle(engine) -> bool:
    load = engine.load()
    return load.running == 0 and load.waiting == 0


async def open_unread_http_stream(port: int, body: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """POST a streamed completion from a socket with a tiny receive buffer, and read nothing (yet)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connect: the window stays small
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    return reader, writer


def sse_events(raw: bytes) -> list:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    events = []
    for block in body.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[len(b"data: "):]
            events.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return events


def dechunk(body: bytes) -> bytes:
    out, i = bytearray(), 0
    while True:
        end = body.index(b"\r\n", i)
        size = int(body[i:end], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2:end + 2 + size]
        i = end + 2 + size + 2


async def test_http_clients_that_never_read_are_capped_then_ended_while_the_worker_serves_others(
        cluster, reference):
    tokens, streams = 6000, 3
    want = await asyncio.to_thread(reference.run, "never", 400)   # greedy: the start of every stream's text
    _, engine = await cluster.add_replica()
    worker = await cluster.add_worker("http-never", http_port=0, buffers=BUFFERS)
    budget = worker.servicer.buffers
    for listener in worker._http._site._server.sockets:   # accepted sockets inherit it: small kernel buffers
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    body = {"prompt": "never", "max_tokens": tokens, "temperature": 0, "stream": True}
    unread = [await open_unread_http_stream(worker.http_port, body) for _ in range(streams)]
    try:
        # (the refused streams' held bytes are handed back as their owners end, just after the refusal)
        await eventually(lambda: budget.refused >= streams and engine_idle(engine) and budget.bytes == 0, timeout_s=60)
        assert budget.peak_bytes <= WORKER_CAP
        # The stuck streams cost the others nothing: a request from another client is served in full.
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{worker.http_port}/v1/completions",
                                 json={"prompt": "never", "max_tokens": 8, "temperature": 0}) as response:
                assert response.status == 200
                other = await response.json()
        assert other["choices"][0]["text"] == (await asyncio.to_thread(reference.run, "never", 8)).text
        for reader, _ in unread:       # now read: the start of the text, then a clear error event, then the end
            raw = await asyncio.wait_for(reader.read(), 30)
            events = sse_events(raw)
            # What waited in the socket buffers and aiohttp's write buffer (a fixed amount per connection:
            # 1,364 chunks of ~195 bytes here), 16 queued chunks and the capped text: far from the whole stream.
            assert len(events) < tokens // 2
            assert events[-1] == "[DONE]"
            error = events[-2]["error"]
            assert error["code"] == "resource_exhausted" and "read the stream too slowly" in error["message"]
            text = "".join(e["choices"][0]["text"] for e in events[:-2] if e.get("choices"))
            assert text and want.text.startswith(text[:len(want.text)])
    finally:
        for _, writer in unread:
            writer.close()
    await eventually(lambda: engine_idle(engine))


async def test_a_session_resume_that_is_never_read_is_capped_then_ends_resource_exhausted(cluster, reference):
    """A request cut off after 3 deltas is resumed on a Session stream whose client then reads nothing: the
    takeover's output is held up to the caps, the request ends RESOURCE_EXHAUSTED with its record ended and
    what was delivered journaled, so a second resume, from the last seq the first one delivered, continues
    exactly there to the Final (as the error tells the client to do)."""
    tokens = 3000
    want = await asyncio.to_thread(reference.run, "resume-never", 400)
    _, engine = await cluster.add_replica()
    worker = await cluster.add_worker("resume-never", buffers=BUFFERS)
    budget = worker.servicer.buffers
    rid = "resume-never-1"
    async with grpc.aio.insecure_channel(worker.address) as channel:
        call = flint_pb2_grpc.FlintStub(channel).Complete(pb.CompleteRequest(
            request_id=rid, prefix="resume-never", sampling=pb.Sampling(max_tokens=tokens)))
        seen = []
        async for message in call:
            if message.WhichOneof("kind") == "delta":
                seen.append(message.delta)
                if len(seen) == 3:
                    break
        call.cancel()                  # the client goes away: nobody produces the request any more
    await eventually(lambda: engine_idle(engine) and rid not in worker.servicer.local, timeout_s=30)

    async with grpc.aio.insecure_channel(worker.address, options=SMALL_WINDOW) as channel:
        stream, outgoing = open_session(flint_pb2_grpc.FlintStub(channel))
        outgoing.put_nowait(pb.ClientMessage(resume=pb.ResumeRequest(request_id=rid, last_seq=len(seen))))
        await eventually(lambda: worker.resumer.taken_over == 1, timeout_s=30)
        await eventually(lambda: budget.refused >= 1 and engine_idle(engine), timeout_s=60)
        assert budget.peak_bytes <= STREAM_CAP
        await eventually(lambda: budget.bytes == 0)
        # Meanwhile another client is served in full on the same worker.
        async with grpc.aio.insecure_channel(worker.address) as other:
            messages = [m async for m in flint_pb2_grpc.FlintStub(other).Complete(pb.CompleteRequest(
                prefix="resume-never", sampling=pb.Sampling(max_tokens=8)))]
        assert messages[-1].final.completion_tokens == 8
        outgoing.put_nowait(None)      # half-close; the stream ends once the resume has
        first = [m async for m in stream]
    record = await worker.servicer.store.get_request(rid)
    assert record is not None and record.state == "failed"      # ended, not left running
    *resumed, end = of_request(first, rid)
    assert end.WhichOneof("kind") == "error", end
    assert end.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "too slowly" in end.error.message
    delivered = [*seen, *check_deltas(resumed, after=len(seen))]

    async with grpc.aio.insecure_channel(worker.address) as channel:   # read this time: on to the Final
        again = [m async for m in flint_pb2_grpc.FlintStub(channel).Session(_one(pb.ClientMessage(
            resume=pb.ResumeRequest(request_id=rid, last_seq=delivered[-1].seq))))]
    *rest, end = of_request(again, rid)
    assert end.WhichOneof("kind") == "final", end
    delivered += check_deltas(rest, after=len(delivered))
    text = "".join(d.text for d in delivered)
    assert text.startswith(want.text)
    assert sum(d.token_count for d in delivered) + end.final.withheld_tokens == end.final.completion_tokens == tokens
    assert worker.resumer.taken_over == 2
    assert budget.bytes == 0


def of_request(messages, rid: str) -> list:
    return [m for m in messages if getattr(m, m.WhichOneof("kind")).request_id == rid]


def check_deltas(messages, *, after: int) -> list:
    """Deltas only, numbered on from seq `after`."""
    assert all(m.WhichOneof("kind") == "delta" for m in messages), [m.WhichOneof("kind") for m in messages]
    assert [m.delta.seq for m in messages] == list(range(after + 1, after + 1 + len(messages)))
    return [m.delta for m in messages]


async def _one(message):
    yield message


async def test_an_http_stream_whose_client_stopped_reading_is_cut_after_the_write_timeout(cluster):
    """security.http_write_timeout_s: a stream whose client accepts nothing for that long loses its connection,
    so its handler (and the request) do not wait for the client forever."""
    _, engine = await cluster.add_replica()
    worker = await cluster.add_worker("http-stall", http_port=0, buffers=BUFFERS,
                                      security={"http_write_timeout_s": 1.0})
    door = worker._http
    for listener in door._site._server.sockets:   # small kernel buffers: the writes stall after a few KB
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    body = {"prompt": "never", "max_tokens": 6000, "temperature": 0, "stream": True}
    reader, writer = await open_unread_http_stream(worker.http_port, body)
    try:
        await eventually(lambda: bool(door._active), timeout_s=30)            # the stream's handler runs
        await eventually(lambda: not door._active and engine_idle(engine), timeout_s=60)   # cut and freed
        raw = await asyncio.wait_for(reader.read(), 30)   # what got through before the cut, then the end
        assert raw.startswith(b"HTTP/1.1 200") and b"data: [DONE]" not in raw
    finally:
        writer.close()


def test_the_http_write_timeout_is_validated_by_name():
    import pytest

    from flint.errors import InvalidArgument
    from flint.security.config import SecurityConfig

    with pytest.raises(InvalidArgument, match="http_write_timeout_s"):
        SecurityConfig(http_write_timeout_s=0)
