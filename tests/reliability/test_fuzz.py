"""Bad input, property-based: every public message type and the msgpack Redis payloads the server reads.

Every case must end in a gRPC status (never UNKNOWN: no unhandled crash), the
server must keep serving afterwards, and Redis must hold no half-written
state (every key flint wrote under the test's prefix expires).
"""

from __future__ import annotations

import asyncio
import secrets
import threading

import grpc
import msgpack
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flint.v1 import flint_pb2 as pb
from rel_support import Cluster

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
IDENTITY = (lambda b: b)
METHODS = {"Complete": "unary_stream", "Edit": "unary_stream", "Resume": "unary_stream",
           "Interrupt": "unary_unary", "Session": "stream_stream"}
NEVER = {grpc.StatusCode.UNKNOWN}


@pytest.fixture(scope="module")
def served(valkey_url, rel_checkpoint, reference):
    """A replica (the real engine on the tiny checkpoint) and a worker on a background event loop, for
    synchronous gRPC clients driven by hypothesis."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = Cluster(valkey_url, f"fz{secrets.token_hex(3)}", rel_checkpoint)
    ok_text = reference.text("ok", 2)

    async def start():
        await cluster.add_replica("r1")
        return (await cluster.add_worker("w1", security={"max_prompt_bytes": 65536})).address

    address = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    channel = grpc.insecure_channel(address)
    try:
        yield cluster, channel, ok_text
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(cluster.close(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def call_raw(channel, method: str, payload: bytes | list[bytes]):
    """Send raw bytes to a method; returns the status code the call ended with."""
    kind = METHODS[method]
    rpc = getattr(channel, kind)(f"/flint.v1.Flint/{method}", request_serializer=IDENTITY,
                                 response_deserializer=IDENTITY)
    try:
        if kind == "unary_unary":
            rpc(payload, timeout=10)
        else:
            arg = iter(payload) if kind == "stream_stream" else payload
            for _ in rpc(arg, timeout=10):
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


def still_serving(channel, ok_text: str) -> None:
    rpc = channel.unary_stream("/flint.v1.Flint/Complete", request_serializer=pb.CompleteRequest.SerializeToString,
                               response_deserializer=pb.ServerMessage.FromString)
    messages = list(rpc(pb.CompleteRequest(prefix="ok", sampling=pb.Sampling(max_tokens=2)), timeout=10))
    assert "".join(m.delta.text for m in messages if m.WhichOneof("kind") == "delta") == ok_text


texts = st.text(max_size=200) | st.just("") | st.sampled_from(["r-1", "a" * 129, "bad id!", "\x00", "é" * 10])
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
samplings = st.builds(lambda t, p, k, s, m, stop, ms: _sampling(t, p, k, s, m, stop, ms),
                      st.none() | floats, st.none() | floats, st.none() | st.integers(-2**31, 2**31 - 1),
                      st.none() | st.integers(0, 2**64 - 1), st.none() | st.integers(0, 2**32 - 1),
                      st.lists(st.text(max_size=300), max_size=20), st.integers(0, 2**32 - 1))
contexts = st.lists(st.builds(pb.ContextFile, path=texts, content=texts), max_size=5)
completes = st.builds(pb.CompleteRequest, request_id=texts, prefix=texts, suffix=texts, context=contexts, path=texts,
                      sampling=samplings, model=st.sampled_from(["", "nope", "a" * 300]),
                      priority=st.integers(0, 5))
edits = st.builds(pb.EditRequest, request_id=texts, code=texts, instruction=texts, prefix=texts, suffix=texts,
                  path=texts, context=contexts, sampling=samplings, model=st.sampled_from(["", "nope"]))
interrupts = st.builds(pb.InterruptRequest, request_id=texts)
resumes = st.builds(pb.ResumeRequest, request_id=texts, last_seq=st.integers(0, 2**64 - 1))
client_messages = st.one_of(
    st.builds(lambda o: pb.ClientMessage(open=o), st.builds(pb.Open, session_id=texts, model=texts, client=texts)),
    st.builds(lambda c: pb.ClientMessage(complete=c), completes),
    st.builds(lambda e: pb.ClientMessage(edit=e), edits),
    st.builds(lambda i: pb.ClientMessage(interrupt=i), interrupts),
    st.builds(lambda r: pb.ClientMessage(resume=r), resumes),
    st.builds(lambda i, c: pb.ClientMessage(redirect=pb.Redirect(interrupt_request_id=i, complete=c)), texts, completes),
    st.just(pb.ClientMessage()),
)


def _sampling(temperature, top_p, top_k, seed, max_tokens, stop, max_time_ms) -> pb.Sampling:
    s = pb.Sampling(stop=stop, max_time_ms=max_time_ms)
    for name, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("seed", seed),
                        ("max_tokens", max_tokens)):
        if value is not None:
            setattr(s, name, value)
    return s


@FUZZ
@given(method=st.sampled_from(sorted(METHODS)), payload=st.binary(max_size=512))
def test_random_bytes_to_every_method_end_in_a_status(served, method, payload):
    _, channel, _ = served
    code = call_raw(channel, method, [payload] if METHODS[method] == "stream_stream" else payload)
    assert code not in NEVER


@FUZZ
@given(message=st.one_of(completes, edits, interrupts, resumes))
def test_structured_requests_end_in_a_status(served, message):
    _, channel, _ = served
    method = {pb.CompleteRequest: "Complete", pb.EditRequest: "Edit", pb.InterruptRequest: "Interrupt",
              pb.ResumeRequest: "Resume"}[type(message)]
    assert call_raw(channel, method, message.SerializeToString()) not in NEVER


@FUZZ
@given(messages=st.lists(client_messages, max_size=6))
def test_session_streams_of_random_messages_stay_open(served, messages):
    _, channel, _ = served
    rpc = channel.stream_stream("/flint.v1.Flint/Session", request_serializer=pb.ClientMessage.SerializeToString,
                                response_deserializer=pb.ServerMessage.FromString)
    probe = pb.ClientMessage(complete=pb.CompleteRequest(request_id=f"probe-{secrets.token_hex(6)}", prefix="ok",
                                                         sampling=pb.Sampling(max_tokens=2)))
    out = list(rpc(iter([*messages, probe]), timeout=20))
    finals = [m.final for m in out if m.WhichOneof("kind") == "final"]
    assert any(f.request_id == probe.complete.request_id for f in finals), "the stream survived every message"


payloads = st.one_of(st.binary(max_size=64), st.builds(msgpack.packb, st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=12)))


@FUZZ
@given(payload=payloads, where=st.sampled_from(["req", "session", "meta", "replica"]))
def test_corrupt_redis_payloads_give_a_status_and_leave_no_half_written_state(served, valkey_url, payload, where):
    cluster, channel, ok_text = served
    p = cluster.key_prefix
    rid = f"fz-{secrets.token_hex(4)}"
    r = redis.Redis.from_url(valkey_url)
    try:
        key = {"req": f"{p}:req:{rid}", "session": f"{p}:session:{rid}", "meta": f"{p}:journal:{rid}:meta",
               "replica": f"{p}:replica:junk"}[where]
        r.set(key, payload, px=30_000)
        if where == "replica":
            r.sadd(f"{p}:replicas", "junk")
        codes = [call_raw(channel, "Interrupt", pb.InterruptRequest(request_id=rid).SerializeToString()),
                 call_raw(channel, "Resume", pb.ResumeRequest(request_id=rid, last_seq=1).SerializeToString()),
                 call_raw(channel, "Session", [pb.ClientMessage(open=pb.Open(session_id=rid)).SerializeToString()])]
        assert not set(codes) & NEVER
        r.delete(key)
        r.srem(f"{p}:replicas", "junk")
        still_serving(channel, ok_text)
        persistent = [k for k in r.scan_iter(match=f"{p}:*") if r.pttl(k) == -1 and k != f"{p}:replicas".encode()]
        assert not persistent, f"keys without expiry: {persistent}"
    finally:
        r.close()
