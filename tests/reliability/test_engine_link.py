"""The engine link (flint.link) on its own: a real replica (real engine, tiny checkpoint) and its link server on
127.0.0.1 port 0, reached by the worker's `LinkClient` as a front-end worker reaches it.

Framing, the token, cancellation reaching the engine, the call's deadline, a replica killed mid-stream, a
stopped replica found by the pings, the frame-size bound, and many requests on one connection.
"""

import asyncio
import os
import signal
import socket

import grpc
import pytest

from rel_support import engine_freed_everything, eventually
from flint.frontend.liveness import LivenessConfig
from flint.internal.v1 import engine_pb2 as ipb
from flint.link import frames as fr
from flint.link.client import MAX_QUEUED_EVENTS, LinkClient
from flint.security.internal import resolve_token


def generate(request_id: str, prefix: str, max_tokens: int) -> ipb.GenerateRequest:
    return ipb.GenerateRequest(request_id=request_id, prefix=prefix, sampling=ipb.SamplingParams(max_tokens=max_tokens))


async def read_all(call) -> tuple[str, ipb.Final]:
    text, final = [], None
    async for event in call:
        kind = event.WhichOneof("kind")
        if kind == "delta":
            text.append(event.delta.text)
        elif kind == "deltas":
            text.extend(d.text for d in event.deltas.items)
        elif kind == "final":
            final = event.final
    return "".join(text), final


async def first_delta(call) -> None:
    async for event in call:
        if event.WhichOneof("kind") in ("delta", "deltas"):
            return


@pytest.fixture
async def link(cluster):
    server, engine = await cluster.add_replica("link")
    client = LinkClient(server.link_address, resolve_token(), LivenessConfig())
    try:
        yield server, engine, client
    finally:
        await client.close()


def feed(reader: fr.FrameReader, data: bytes) -> list:
    """Push `data` and take every whole frame there is, as the link's two ends do."""
    reader.push(data)
    frames = []
    while (frame := reader.next()) is not None:
        frames.append(frame)
    return frames


def test_frames_are_cut_wherever_the_bytes_split():
    stream = (fr.frame(fr.HELLO, 0, b"token") + fr.frame(fr.REQUEST, 7, fr.request_payload(b"body", [("k", "v")]))
              + fr.frame(fr.PING, 0))
    reader = fr.FrameReader()
    frames = [f for i in range(0, len(stream), 3) for f in feed(reader, stream[i:i + 3])]
    assert feed(reader, b"") == [] and reader._buffer == b""
    assert [(kind, rid) for kind, rid, _ in frames] == [(fr.HELLO, 0), (fr.REQUEST, 7), (fr.PING, 0)]
    assert frames[0][2] == b"token"
    assert fr.split_request(frames[1][2]) == ((("k", "v"),), b"body")
    assert fr.split_request(fr.request_payload(b"x", ())) == ((), b"x")
    assert fr.split_end(fr.end_payload(14, "gone", 100)) == (14, "gone", 100)


def test_a_frame_past_the_bound_or_of_an_unknown_kind_breaks_the_framing():
    with pytest.raises(fr.FrameError, match="at most 1024"):
        feed(fr.FrameReader(1024), fr.HEADER.pack(1025, fr.EVENT, 1))
    with pytest.raises(fr.FrameError, match="unknown frame kind"):
        feed(fr.FrameReader(), fr.HEADER.pack(0, 99, 1))


async def test_a_request_streams_its_events_and_final_over_the_link(link, reference):
    server, engine, client = link
    assert server.link_address.rsplit(":", 1)[0] == server.address.rsplit(":", 1)[0]   # the same private interface
    want = await asyncio.to_thread(reference.run, "over the link", 12)
    text, final = await read_all(client.Generate(generate("l-1", "over the link", 12), timeout=60))
    assert text == want.text and final.completion_tokens == 12
    await eventually(lambda: engine_freed_everything(engine))


async def test_many_requests_on_one_connection_each_get_their_own_events_in_order(link, reference):
    _, _, client = link
    prompts = [f"request {i} " for i in range(12)]
    wants = await asyncio.gather(*(asyncio.to_thread(reference.run, p, 20 + i) for i, p in enumerate(prompts)))
    calls = [client.Generate(generate(f"m-{i}", p, 20 + i), timeout=120) for i, p in enumerate(prompts)]
    assert len({id(call._connection) for call in calls}) == 1   # one connection carries them all
    results = await asyncio.gather(*(read_all(call) for call in calls))
    for (text, final), want, i in zip(results, wants, range(len(prompts))):
        assert text == want.text
        assert final.completion_tokens == 20 + i


async def test_a_call_nobody_reads_holds_a_bounded_queue_and_loses_nothing_once_read(link, reference):
    _, engine, client = link
    want = await asyncio.to_thread(reference.run, "unread", 3000)
    unread = client.Generate(generate("unread", "unread", 3000), timeout=120)
    await eventually(lambda: unread._paused or unread.done(), timeout_s=60)
    assert unread._paused, "the replica was asked to pause the request"
    await asyncio.sleep(0.3)   # what was in flight when the replica read the PAUSE has arrived by now
    assert MAX_QUEUED_EVENTS <= len(unread._events) <= 2 * MAX_QUEUED_EVENTS
    text, final = await read_all(unread)                                 # then everything, in order
    assert text == want.text and final.completion_tokens == 3000
    await eventually(lambda: engine_freed_everything(engine))


async def test_a_call_nobody_reads_does_not_hold_up_the_other_calls_on_its_connection(link, reference):
    """The owner of a new request holds its engine call's first event until its claim holds (a slow Redis), and
    a client may stop reading: the link's other requests must keep flowing meanwhile, as gRPC streams do."""
    _, engine, client = link
    want = await asyncio.to_thread(reference.run, "flowing", 400)
    unread = client.Generate(generate("held", "held", 3000), timeout=120)
    await eventually(lambda: len(unread._events) >= MAX_QUEUED_EVENTS or unread.done(), timeout_s=60)
    text, final = await asyncio.wait_for(read_all(client.Generate(generate("flowing", "flowing", 400), timeout=60)), 30)
    assert text == want.text and final.completion_tokens == 400
    assert not unread.done() and len(unread._events) <= 2 * MAX_QUEUED_EVENTS
    unread.cancel()
    await eventually(lambda: engine_freed_everything(engine))


async def test_a_worker_that_stops_reading_stops_the_replicas_writes_at_the_buffer_mark(link, reference):
    """The replica's request waits for the connection to drain: its output waits in the engine's queue, not in an
    ever-growing link buffer; all of it arrives, in order, once the worker reads. (A plain socket that reads
    nothing until told, with small socket buffers and a small high-water mark set before the request, so the
    test's stream is big enough to reach the mark.)"""
    server, engine, _ = link
    tokens = 6000
    want = await asyncio.to_thread(reference.run, "stalled", tokens)
    host, port = server.link_address.rsplit(":", 1)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # before connecting: a small window
        sock.connect((host, int(port)))
        sock.sendall(fr.frame(fr.HELLO, 0, resolve_token().encode()))
        await eventually(lambda: server._link._connections)
        [conn] = server._link._connections
        conn._transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn._transport.set_write_buffer_limits(high=4096)
        sock.sendall(fr.frame(fr.REQUEST, 1, fr.request_payload(
            generate("stalled", "stalled", tokens).SerializeToString(), ())))
        await eventually(lambda: conn._paused, timeout_s=60)
        await eventually(lambda: engine.load().running == 0, timeout_s=120)   # the engine finished generating
        assert conn._paused
        held = conn._transport.get_write_buffer_size()
        frames, text, ended, largest = fr.FrameReader(), [], None, 0
        while ended is None:
            for kind, rid, payload in feed(frames, await asyncio.to_thread(sock.recv, 65536)):
                largest = max(largest, len(fr.frame(kind, rid, payload)))
                if kind == fr.EVENT:
                    event = ipb.GenerateEvent.FromString(payload)
                    text += [event.delta.text] if event.HasField("delta") else [d.text for d in event.deltas.items]
                elif kind == fr.END:
                    ended = fr.split_end(payload)
    assert ended[0] == fr.OK and "".join(text) == want.text
    # At most one frame past the mark: the writer checks the mark after each frame. (A frame is one engine
    # batch: the deltas the engine made while the writer waited go out together, so it may be far over 1 KiB.)
    assert held < 4096 + largest


async def test_engine_errors_come_back_with_their_status_and_details(link):
    _, _, client = link
    call = client.Generate(ipb.GenerateRequest(request_id="bad", prefix="x",
                                               sampling=ipb.SamplingParams(max_tokens=1, temperature=-1.0)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_all(call)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "temperature" in err.value.details()
    assert call.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("token", ["", "not-the-token-of-this-deployment"])
async def test_a_connection_without_the_token_is_refused_unauthenticated(link, token):
    server, engine, _ = link
    client = LinkClient(server.link_address, token, LivenessConfig())
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_all(client.Generate(generate("no-token", "x", 4), timeout=30))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "internal token" in err.value.details()
    finally:
        await client.close()
    assert engine.load().running == 0


async def test_cancel_reaches_the_engine_which_frees_the_request(link):
    server, engine, client = link
    call = client.Generate(generate("c-1", "cancel me", 8000), timeout=120)
    done = []
    call.add_done_callback(done.append)
    await first_delta(call)
    assert engine.load().running == 1
    assert call.cancel() and not call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call.__anext__()
    assert done == [call] and call.code() == grpc.StatusCode.CANCELLED
    await eventually(lambda: engine_freed_everything(engine))
    await eventually(lambda: server.info().cancelled_total == 1)


async def test_a_cancel_that_arrives_with_its_request_leaves_nothing_behind_on_the_replica(link):
    server, engine, client = link
    for i in range(3):   # cancelled before the connection is up: REQUEST and CANCEL reach the replica together
        client.Generate(generate(f"gone-{i}", "never run", 8000), timeout=60).cancel()
    text, _ = await read_all(client.Generate(generate("after-cancels", "runs", 2), timeout=60))
    assert text
    [conn] = server._link._connections
    assert conn.tasks == {} and conn._contexts == {}
    await eventually(lambda: engine_freed_everything(engine))


async def test_the_calls_deadline_ends_it_deadline_exceeded_and_frees_the_engine(link):
    _, engine, client = link
    call = client.Generate(generate("d-1", "deadline", 8000), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_all(call)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: engine_freed_everything(engine))


async def test_a_request_past_the_frame_bound_is_not_sent(cluster):
    server, engine = await cluster.add_replica("bound")
    client = LinkClient(server.link_address, resolve_token(), LivenessConfig(), max_frame_bytes=4096)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_all(client.Generate(generate("big", "x" * 5000, 1)))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        text, _ = await read_all(client.Generate(generate("small", "x" * 100, 2), timeout=60))  # the link goes on
        assert text
    finally:
        await client.close()


async def test_a_frame_past_the_replicas_bound_closes_that_connection(link):
    server, _, client = link
    host, port = server.link_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(fr.frame(fr.HELLO, 0, resolve_token().encode())
                 + fr.HEADER.pack(fr.MAX_FRAME_BYTES + 1, fr.REQUEST, 1))
    assert await asyncio.wait_for(reader.read(), 10) == b""    # closed, nothing answered
    writer.close()
    text, _ = await read_all(client.Generate(generate("after", "still serving", 2), timeout=60))
    assert text


async def test_an_unauthenticated_peer_cannot_send_more_than_a_small_first_frame(link):
    server, _, _ = link
    host, port = server.link_address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(fr.HEADER.pack(fr.MAX_HELLO_BYTES + 1, fr.HELLO, 0))
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()


async def test_a_lost_connection_fails_its_calls_unavailable_and_the_next_call_reconnects(link, reference):
    _, engine, client = link
    calls = [client.Generate(generate(f"lost-{i}", f"lost {i}", 8000), timeout=120) for i in range(2)]
    await asyncio.gather(*(first_delta(call) for call in calls))
    client._connection._transport.abort()    # the connection breaks (as a network fault would), both ends live
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read_all(call)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await eventually(lambda: engine_freed_everything(engine))   # the replica cancelled both with the connection
    want = await asyncio.to_thread(reference.run, "again", 5)
    text, _ = await read_all(client.Generate(generate("again", "again", 5), timeout=60))
    assert text == want.text


async def test_a_connect_failure_is_unavailable_before_any_event():
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = LinkClient(f"127.0.0.1:{port}", "t" * 20, LivenessConfig())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await read_all(client.Generate(generate("nowhere", "x", 1)))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    await client.close()


async def test_a_replica_killed_mid_stream_fails_its_calls_unavailable_and_the_next_call_reconnects(cluster):
    await cluster.add_replica_process("doomed")
    await cluster.add_replica("survivor")
    from flint.replica.registry import ReplicaRegistry

    infos = {r.replica_id: r for r in await ReplicaRegistry(cluster_redis(cluster), cluster.key_prefix).list()}
    client = LinkClient(infos["doomed"].link_address, resolve_token(), LivenessConfig())
    try:
        calls = [client.Generate(generate(f"k-{i}", f"killed {i}", 8000), timeout=120) for i in range(3)]
        await asyncio.gather(*(first_delta(call) for call in calls))
        cluster.kill_process("doomed")
        for call in calls:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await read_all(call)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.aio.AioRpcError) as err:   # a new connection, refused: UNAVAILABLE too
            await read_all(client.Generate(generate("k-next", "x", 1)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await client.close()


async def test_a_worker_loop_busy_past_the_ping_timeout_does_not_blame_the_replica(link, reference):
    """The worker's own event loop (uvloop, as workers run) blocked longer than the ping timeout right after a ping
    went out: the pong that arrived meanwhile is read before the overdue check runs (uvloop polls the socket
    first: seen in this test's trace), so the connection goes on."""
    import threading
    import time

    import uvloop

    server, _, _ = link
    want = await asyncio.to_thread(reference.run, "busy worker", 5)
    result = {}

    async def worker() -> None:
        client = LinkClient(server.link_address, resolve_token(),
                            LivenessConfig(engine_keepalive_time_s=0.2, engine_keepalive_timeout_s=0.3))
        try:
            await read_all(client.Generate(generate("first", "first", 2), timeout=60))
            connection = client._connection
            connection._timer.cancel()
            connection._heard = connection.loop.time() - 1.0
            connection._check()          # a ping goes out now (as when the link has been quiet for a while)
            time.sleep(1.0)              # the loop blocked past the ping timeout; the pong arrives meanwhile
            await asyncio.sleep(0.1)
            result["same connection"] = client._connection is connection and not connection.closed
            result["text"], _ = await read_all(client.Generate(generate("busy", "busy worker", 5), timeout=60))
        except grpc.aio.AioRpcError as err:
            result["error"] = err.details()
        finally:
            await client.close()

    thread = threading.Thread(target=uvloop.run, args=(worker(),))
    thread.start()
    await asyncio.to_thread(thread.join, 60)
    assert result == {"same connection": True, "text": want.text}


async def test_a_stopped_replica_is_found_by_the_pings_and_its_calls_end_unavailable(cluster):
    await cluster.add_replica_process("frozen")
    from flint.replica.registry import ReplicaRegistry

    [info] = await ReplicaRegistry(cluster_redis(cluster), cluster.key_prefix).list()
    liveness = LivenessConfig(engine_keepalive_time_s=0.5, engine_keepalive_timeout_s=0.5)
    client = LinkClient(info.link_address, resolve_token(), liveness)
    pid = cluster.pids()["frozen"]
    try:
        call = client.Generate(generate("f-1", "frozen", 8000), timeout=120)
        await first_delta(call)
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await asyncio.wait_for(read_all(call), 30)   # no per-call watch here: only the pings end it
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "did not answer a ping" in err.value.details()
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        await client.close()


def cluster_redis(cluster):
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(cluster.redis_url)
