"""The request owner against a scripted engine stream (a real gRPC server, or the engine link's server) and real
Redis (Valkey). Every test runs over both engine transports (`engine_transport`: the link, and a gRPC call).

Each test scripts what the engine replica sends and checks what the owner
delivers, journals and records: seq numbering, every kind of ending, cancel
and interrupt, a takeover's skip of journaled text, and a replica that
refuses the connection.
"""

import asyncio
import secrets

import grpc
import msgpack
import pytest
import redis.asyncio as aioredis

from flint.errors import InvalidArgument, NotFound, Unavailable
from flint.frontend import events as ev
from flint.frontend.interrupts import AckTo
from flint.frontend.journal import Journal, JournalConfig, RequestJournal
from flint.frontend.owner import LocalRequests, RequestOwner, ResumePoint
from flint.frontend.render import from_message
from flint.frontend.replicas import ReplicaPool
from flint.frontend.routing import PowerOfTwoChoices
from flint.frontend.store import RequestRecord, Store
from flint.internal.v1 import engine_pb2 as ipb
from flint.internal.v1 import engine_pb2_grpc
from flint.link.server import LinkServer
from flint.replica.registry import ReplicaInfo, ReplicaRegistry
from flint.respconn import RespConnection
from flint.v1 import flint_pb2 as pb

HOLD = "hold"  # script step: send nothing more until cancelled
LINGER = "linger"  # script step: wait 0.3 s before the call's status (a replica slow to end its handler)


def started(prompt_tokens=5):
    return ipb.GenerateEvent(started=ipb.Started(prompt_tokens=prompt_tokens))


def delta(text, tokens=1):
    return ipb.GenerateEvent(delta=ipb.Delta(text=text, token_count=tokens))


def final(completion_tokens, reason=pb.FINISH_REASON_LENGTH):
    return ipb.GenerateEvent(final=ipb.Final(finish_reason=reason, prompt_tokens=5,
                                             completion_tokens=completion_tokens, queue_ms=1.0))


class ScriptedEngine(engine_pb2_grpc.EngineServicer):
    """An engine replica whose Generate streams the next script; records what it was asked and cancelled."""

    def __init__(self):
        self.scripts: list[list] = []
        self.requests: list[ipb.GenerateRequest] = []
        self.cancelled = asyncio.Event()

    async def Generate(self, request, context):
        self.requests.append(request)
        try:
            for step in self.scripts.pop(0):
                if step == HOLD:
                    await asyncio.Event().wait()
                elif step == LINGER:
                    await asyncio.sleep(0.3)
                elif isinstance(step, tuple):
                    await context.abort(*step)
                else:
                    yield step
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


TOKEN = "test-token-0123456789"


@pytest.fixture(params=["link", "grpc"])
async def engine(request):
    servicer = ScriptedEngine()
    servicer.transport = request.param
    server = grpc.aio.server()
    engine_pb2_grpc.add_EngineServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    servicer.address = f"127.0.0.1:{port}"
    link = LinkServer(servicer, TOKEN)
    servicer.link_address = f"127.0.0.1:{await link.start('127.0.0.1')}"
    try:
        yield servicer
    finally:
        await asyncio.gather(server.stop(0), link.stop(0))


class Harness:
    def __init__(self, redis, prefix, engine, valkey_url):
        self.redis = redis
        self.prefix = prefix
        self.engine = engine
        self.claims = RespConnection.from_url(valkey_url)     # as a worker has them: one for claims,
        self.batches = RespConnection.from_url(valkey_url)    # one for the journal's batches
        self.store = Store(redis, prefix, session_ttl_s=60, request_ttl_s=60, claims=self.claims)
        self.journal = Journal(redis, prefix, JournalConfig(), batches=self.batches)
        self.registry = ReplicaRegistry(redis, prefix)
        self.pool = ReplicaPool(self.registry, PowerOfTwoChoices(seed=0), wait_s=0.5, internal_token=TOKEN,
                                engine_transport=engine.transport)
        self.local = LocalRequests()
        self.replica = ReplicaInfo(replica_id="scripted", address=engine.address, link_address=engine.link_address,
                                   model="m", max_context_tokens=64)
        self.events: list = []

    async def start(self, request_id="r-1", *, replica=None, resume_from=ResumePoint(), pause_writes_ms=0,
                    outbox=None, sink=None):
        """Register the request (claim + journal start), then start its owner (with Redis writes held for
        `pause_writes_ms` from then on)."""
        record = RequestRecord(request_id=request_id, owner="w-test", replica_id=(replica or self.replica).replica_id)
        await self.store.claim_request(record)
        await self.journal.begin(request_id, b"", model="m")
        request_journal = RequestJournal(self.journal, request_id, chars=resume_from.chars)
        if pause_writes_ms:
            await self.redis.execute_command("CLIENT", "PAUSE", pause_writes_ms, "WRITE")
        owner = RequestOwner(record=record, engine_request=ipb.GenerateRequest(request_id=request_id),
                             pool=self.pool, replica=replica or self.replica, store=self.store, local=self.local,
                             sink=sink or (self.events.append if outbox is None else outbox.put),
                             journal=request_journal,
                             resume_from=resume_from, outbox=outbox)
        owner.start()
        return owner

    async def journaled(self, request_id="r-1") -> list:
        return [from_message(pb.ServerMessage.FromString(e.message)) for e in await self.journal.read(request_id)]


@pytest.fixture
async def harness(valkey_url, engine):
    redis = aioredis.Redis.from_url(valkey_url)
    h = Harness(redis, f"owner-{secrets.token_hex(4)}", engine, valkey_url)
    try:
        yield h
    finally:
        await h.pool.close()
        await h.claims.close()
        await h.batches.close()
        await redis.aclose()


def deltas(events) -> list:
    return [e for e in events if isinstance(e, ev.Delta)]


def text(events) -> str:
    return "".join(d.text for d in deltas(events))


async def until(predicate, timeout_s=10.0):
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_live_request_numbers_deltas_and_ends_with_one_final_journaled_in_order(harness):
    harness.engine.scripts.append([started(), delta("ab", 2), delta("c"), final(3)])
    owner = await harness.start()
    assert "r-1" in harness.local
    await owner.wait()
    accepted, d1, d2, end = harness.events  # one client delta per engine delta
    assert accepted == ev.Accepted("r-1", 5)
    assert (d1.seq, d1.text, d1.token_count, d2.seq, d2.text, d2.token_count) == (1, "ab", 2, 2, "c", 1)
    assert isinstance(end, ev.Final) and end.seq == 3 and end.finish_reason == ev.FinishReason.LENGTH
    assert end.completion_tokens == 3 and end.replica_id == "scripted" and end.timings.queue_ms == 1.0
    assert await harness.journaled() == harness.events  # the journal holds exactly what the client got
    record = await harness.store.get_request("r-1")
    assert (record.state, record.last_seq) == ("finished", 2)
    assert list(harness.pool._links) == ([harness.engine.link_address] if harness.engine.transport == "link" else [])


async def test_an_engine_call_that_sent_its_final_is_left_to_end_not_cancelled(harness):
    """After the engine's Final the owner is done with the call; cancelling it would cost a RST_STREAM to the
    replica (and its handling there) on every request, so the call ends by itself, with its status."""
    harness.engine.scripts.append([started(), delta("a"), final(1), LINGER])
    owner = await harness.start()
    await owner.wait()
    assert isinstance(harness.events[-1], ev.Final)
    await asyncio.sleep(0.5)   # past the replica's linger: its handler returned, or was cancelled meanwhile
    assert not harness.engine.cancelled.is_set()


async def test_deltas_reach_the_client_while_redis_holds_every_write_and_the_journal_catches_up(harness):
    """Redis is off the per-delta path: with every write held (CLIENT PAUSE WRITE), the whole stream is still
    delivered; the journal follows in a batch once writes resume, before the request's end is recorded."""
    harness.engine.scripts.append([started(), *(delta(c) for c in "abcdef"), final(6)])
    owner = await harness.start(pause_writes_ms=300)
    await until(lambda: harness.events and isinstance(harness.events[-1], ev.Final))
    assert text(harness.events) == "abcdef" and not owner.done  # delivered; the end waits for the journal
    assert await harness.redis.xlen(harness.journal.stream_key("r-1")) == 0  # reads pass a write pause
    await owner.wait()
    assert await harness.journaled() == harness.events
    assert (await harness.store.get_request("r-1")).state == "finished"


async def test_a_redis_stall_longer_than_the_journal_write_timeout_leaves_a_gap_and_still_records_the_end(harness):
    """journal.write_timeout_ms bounds how long a request's end waits for its journal: with every write held
    past it, the stream is delivered whole, the end is still recorded once writes resume, and the journal is
    marked with a gap, so a later resume refuses it clearly instead of replaying a hole."""
    harness.journal = Journal(harness.redis, harness.prefix, JournalConfig(write_timeout_ms=100.0), batches=harness.batches)
    harness.engine.scripts.append([started(), *(delta(c) for c in "abc"), final(3)])
    owner = await harness.start(pause_writes_ms=400)
    await until(lambda: harness.events and isinstance(harness.events[-1], ev.Final))
    assert text(harness.events) == "abc"
    await owner.wait()
    assert await harness.journal.has_gap("r-1")
    assert (await harness.store.get_request("r-1")).state == "finished"


async def test_claim_journal_start_and_session_affinity_are_one_round_trip(harness):
    from flint.frontend.store import SessionRecord

    session = SessionRecord(session_id="s-1", replica_id="scripted")
    deletes, writes = harness.journal.begin_writes("r-2", b"request", tenant="t", model="m")
    await harness.redis.xadd(harness.journal.stream_key("r-2"), {"m": b"old"})  # an older journal under the id
    record = RequestRecord(request_id="r-2", owner="w-test")
    await harness.store.claim_request(record, deletes=deletes, writes=[*writes, harness.store.session_write(session)])
    assert (await harness.journal.meta("r-2")).request == b"request"
    assert await harness.redis.xlen(harness.journal.stream_key("r-2")) == 0
    assert (await harness.store.get_session("s-1")).replica_id == "scripted"
    # A running id is refused, and nothing else is written.
    session2 = SessionRecord(session_id="s-2")
    with pytest.raises(InvalidArgument, match="already in use"):
        await harness.store.claim_request(record, writes=[harness.store.session_write(session2)])
    assert await harness.store.get_session("s-2") is None

    assert "r-1" not in harness.local


async def test_interrupt_ends_with_an_interrupted_final_after_the_last_delta_and_cancels_the_engine(harness):
    harness.engine.scripts.append([started(), delta("a"), delta("b"), HOLD])
    owner = await harness.start()
    await until(lambda: text(harness.events) == "ab")
    last = 2
    result = await owner.interrupt()
    assert result.was_running and result.last_seq == last
    end = harness.events[-1]
    assert isinstance(end, ev.Final) and end.finish_reason == ev.FinishReason.INTERRUPTED
    assert end.seq == last + 1 and end.completion_tokens == 2 and end.prompt_tokens == 5
    await asyncio.wait_for(harness.engine.cancelled.wait(), 5)
    record = await harness.store.get_request("r-1")
    assert (record.state, record.last_seq) == ("interrupted", last)  # recorded before interrupt() returned
    assert (await harness.journaled())[-1] == end
    again = await owner.interrupt()  # a second interrupt (the flag poll) gets the same answer, no second Final
    assert again == result
    assert sum(isinstance(e, ev.Final) for e in harness.events) == 1


async def _ack_listener(harness, channel: str):
    """A subscriber on `channel` (a requester's ack channel): returns (pubsub, messages), each message with the
    request's record as it was in Redis when the message arrived."""
    pubsub = harness.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    got: list = []

    async def listen():
        async for message in pubsub.listen():
            got.append((msgpack.unpackb(message["data"]), await harness.store.get_request("r-1")))

    return pubsub, got, asyncio.ensure_future(listen())


async def test_an_interrupt_delivers_its_final_at_once_and_acknowledges_behind_the_record_of_the_end(harness):
    """A cross-worker interrupt: the interrupted Final goes out in the interrupter's step (no wait for the owner's
    task), and the owner publishes the requester's acknowledgement itself, in the round trip that records the
    end and after that record, so the requester hears it once the record says interrupted."""
    harness.engine.scripts.append([started(), delta("a"), delta("b"), HOLD])
    owner = await harness.start()
    await until(lambda: text(harness.events) == "ab")
    pubsub, acks, listening = await _ack_listener(harness, "acks-of-w-b")
    try:
        answer = owner.interrupt_soon(AckTo("acks-of-w-b", "nonce-1"))
        end = harness.events[-1]   # already delivered: no await since interrupt_soon
        assert isinstance(end, ev.Final) and end.finish_reason == ev.FinishReason.INTERRUPTED and end.seq == 3
        result = await answer
        assert result.was_running and result.last_seq == 2 and result.acknowledged
        await until(lambda: acks)
        await asyncio.sleep(0.1)   # no second acknowledgement follows
        [(message, record)] = acks
        assert message == {"request_id": "r-1", "nonce": "nonce-1", "was_running": True, "last_seq": 2}
        assert (record.state, record.last_seq) == ("interrupted", 2)
        await asyncio.wait_for(harness.engine.cancelled.wait(), 5)
        assert (await harness.journaled())[-1] == end
        assert sum(isinstance(e, ev.Final) for e in harness.events) == 1
    finally:
        listening.cancel()
        await pubsub.aclose()


async def test_an_interrupts_ack_rides_the_record_of_the_end_also_when_the_journal_cannot_carry_it(harness):
    harness.engine.scripts.append([started(), delta("a"), HOLD])
    owner = await harness.start()
    await until(lambda: text(harness.events) == "a")
    harness.journal.incomplete.add("r-1")   # the journal lost an entry: the end is recorded on its own
    pubsub, acks, listening = await _ack_listener(harness, "acks-of-w-b")
    try:
        result = await owner.interrupt_soon(AckTo("acks-of-w-b", "nonce-2"))
        assert result.was_running and result.acknowledged
        await until(lambda: acks)
        [(message, record)] = acks
        assert message["nonce"] == "nonce-2" and (record.state, record.last_seq) == ("interrupted", 1)
        assert await harness.journal.has_gap("r-1")
    finally:
        listening.cancel()
        await pubsub.aclose()


async def test_an_interrupt_after_the_end_is_not_acknowledged_by_the_owner(harness):
    """Once the end is recorded the owner publishes nothing: the caller acknowledges (was_running False)."""
    harness.engine.scripts.append([started(), delta("a"), final(1)])
    owner = await harness.start()
    await owner.wait()
    result = await owner.interrupt_soon(AckTo("acks-of-w-b", "nonce-3"))
    assert not result.was_running and not result.acknowledged and result.last_seq == 1


async def test_an_interrupt_while_a_client_cancel_records_the_end_leaves_the_ack_to_its_caller(harness):
    """The client went away and the owner is recording that end (Redis holds writes) when an interrupt with an
    acknowledgement comes: the record is queued already, so the caller acknowledges (was_running False)."""
    harness.engine.scripts.append([started(), delta("a"), HOLD])
    owner = await harness.start(pause_writes_ms=300)
    await until(lambda: text(harness.events) == "a")
    owner.cancel_soon()
    await until(lambda: owner._end is not None)   # the end is queued, behind the held writes
    result = await owner.interrupt_soon(AckTo("acks-of-w-b", "nonce-4"))
    assert not result.was_running and not result.acknowledged and result.last_seq == 1
    assert not any(isinstance(e, ev.Final) for e in harness.events)   # the client is gone: no Final for it
    assert (await harness.store.get_request("r-1")).state == "interrupted"


async def test_an_interrupt_asked_for_before_a_cancel_lands_ends_with_the_interrupted_final(harness):
    """The interrupt's first step runs before the owner's task handles the cancel it caused (here the client's
    cancel comes in the loop turn the delta went out, so the task is already due to wake): the request must
    still end with the interrupted Final the interrupter is promised, not as a silent cancel."""
    harness.engine.scripts.append([started(), delta("a"), delta("b"), HOLD])
    owner, interrupting = None, []

    def sink(event):
        harness.events.append(event)
        if isinstance(event, ev.Delta) and event.text == "b":
            interrupting.append(asyncio.ensure_future(owner.interrupt()))
            owner.cancel_soon()   # the client's cancel, before the interrupt task's first step

    owner = await harness.start(sink=sink)
    await until(lambda: interrupting)
    result = await interrupting[0]
    await owner.wait()
    assert result.was_running and result.last_seq == 2
    end = harness.events[-1]
    assert isinstance(end, ev.Final) and end.finish_reason == ev.FinishReason.INTERRUPTED and end.seq == 3
    record = await harness.store.get_request("r-1")
    assert (record.state, record.last_seq) == ("interrupted", 2)


async def test_cancel_delivers_nothing_more_and_frees_the_engine(harness):
    harness.engine.scripts.append([started(), delta("a"), HOLD])
    owner = await harness.start()
    await until(lambda: len(harness.events) == 2)
    await owner.cancel()
    await asyncio.wait_for(harness.engine.cancelled.wait(), 5)
    assert len(harness.events) == 2
    record = await harness.store.get_request("r-1")
    assert not record.running and "r-1" not in harness.local


async def test_engine_error_is_journaled_and_delivered_as_failed(harness):
    harness.engine.scripts.append([started(), delta("a"), (grpc.StatusCode.INVALID_ARGUMENT, "prompt too long")])
    owner = await harness.start()
    await owner.wait()
    failed = harness.events[-1]
    assert isinstance(failed, ev.Failed) and isinstance(failed.error, InvalidArgument)
    assert "prompt too long" in failed.error.message
    assert isinstance((await harness.journaled())[-1], ev.Failed)  # a resume answers the same error
    assert (await harness.store.get_request("r-1")).state == "failed"


async def test_replica_lost_mid_stream_fails_retryable_and_leaves_the_journal_open_for_a_resume(harness):
    harness.engine.scripts.append([started(), delta("a"), (grpc.StatusCode.UNAVAILABLE, "gone")])
    owner = await harness.start()
    await owner.wait()
    failed = harness.events[-1]
    assert isinstance(failed, ev.Failed) and isinstance(failed.error, Unavailable) and failed.error.retryable
    assert not any(isinstance(e, ev.Failed) for e in await harness.journaled())


async def test_takeover_skips_journaled_text_and_continues_the_seqs(harness):
    # The journal holds seqs 1-2 ("ab", "cd"); running it again must give the same text, then more.
    harness.engine.scripts.append([started(), delta("a"), delta("bc"), delta("de"), delta("f"), final(6)])
    point = ResumePoint(seq=2, chars=4, tokens=3, text="abcd", accepted=True)
    owner = await harness.start(resume_from=point)
    await owner.wait()
    d3, d4, end = harness.events  # no second Accepted; "de" straddles the journal's end
    assert (d3.seq, d3.text, d4.seq, d4.text, end.seq, end.completion_tokens) == (3, "e", 4, "f", 5, 6)


async def test_takeover_numbers_deltas_as_the_first_run_and_skips_those_the_client_has_beyond_the_journal(
        harness):
    # The journal lags: it holds seq 1 ("a"), the client got seqs 2-3 ("b", "c") from the dead owner.
    harness.engine.scripts.append([started(), delta("a"), delta("b"), delta("c"), delta("d"), final(4)])
    point = ResumePoint(seq=1, chars=1, tokens=1, text="a", accepted=True, client_seq=3)
    owner = await harness.start(resume_from=point)
    await owner.wait()
    d4, end = harness.events
    assert (d4.seq, d4.text, end.seq, end.completion_tokens) == (4, "d", 5, 4)
    # The journal gets seqs 2-4 too, so the next resume has them all.
    assert [(e.seq, e.text) for e in deltas(await harness.journaled())] == [(2, "b"), (3, "c"), (4, "d")]


async def test_takeover_refuses_when_the_client_is_past_the_journal_and_deltas_split_differently(harness):
    harness.engine.scripts.append([started(), delta("ab"), delta("c"), final(2)])
    owner = await harness.start(resume_from=ResumePoint(seq=1, chars=1, text="a", accepted=True, client_seq=2))
    await owner.wait()
    [failed] = harness.events
    assert isinstance(failed, ev.Failed) and "split its deltas differently" in failed.error.message


async def test_takeover_refuses_a_last_seq_past_the_end(harness):
    harness.engine.scripts.append([started(), delta("a"), delta("b"), final(2)])
    owner = await harness.start(resume_from=ResumePoint(seq=1, chars=1, text="a", accepted=True, client_seq=5))
    await owner.wait()
    [failed] = harness.events
    assert isinstance(failed, ev.Failed) and "past its end" in failed.error.message


async def test_takeover_that_regenerates_different_text_fails_instead_of_sending_it(harness):
    harness.engine.scripts.append([started(), delta("ax"), delta("yz"), final(2)])
    owner = await harness.start(resume_from=ResumePoint(seq=1, chars=2, tokens=1, text="ab", accepted=True))
    await owner.wait()
    [failed] = harness.events
    assert isinstance(failed, ev.Failed) and isinstance(failed.error, NotFound)
    assert "different text" in failed.error.message


async def test_replica_refusing_the_connection_is_dropped_and_another_serves(harness):
    dead = ReplicaInfo(replica_id="dead", address="127.0.0.1:1", link_address="127.0.0.1:1", model="m",
                       max_context_tokens=64)
    await harness.registry.publish(dead, ttl_s=60)
    await harness.registry.publish(harness.replica, ttl_s=60)
    harness.engine.scripts.append([started(), delta("a"), final(1)])
    owner = await harness.start(replica=dead)
    await owner.wait()
    assert [type(e) for e in harness.events] == [ev.Accepted, ev.Delta, ev.Final]
    assert harness.events[-1].replica_id == "scripted"
    assert [r.replica_id for r in await harness.pool.replicas(fresh=True)] == ["scripted"]


def batched(*texts):
    """Engine deltas a replica sent in one message (it was ahead of the stream)."""
    return ipb.GenerateEvent(deltas=ipb.Deltas(items=[ipb.Delta(text=t, token_count=1) for t in texts]))


async def test_deltas_a_replica_sent_together_are_numbered_one_per_engine_delta(harness):
    harness.engine.scripts.append([started(), batched("ab", "c"), delta("d"), final(3)])
    owner = await harness.start()
    await owner.wait()
    assert [(d.seq, d.text) for d in deltas(harness.events)] == [(1, "ab"), (2, "c"), (3, "d")]
    assert await harness.journaled() == harness.events


async def test_takeover_numbers_batched_deltas_as_the_first_run_numbered_single_ones(harness):
    # The first run sent "a", "b", "c", "d" one by one; the client got seqs 1-3, the journal seq 1. The run again
    # is ahead of the stream and sends "a", "b", "c" together: the seqs must still line up.
    harness.engine.scripts.append([started(), batched("a", "b", "c"), delta("d"), final(4)])
    owner = await harness.start(resume_from=ResumePoint(seq=1, chars=1, tokens=1, text="a", accepted=True,
                                                        client_seq=3))
    await owner.wait()
    d4, end = harness.events
    assert (d4.seq, d4.text, end.seq, end.completion_tokens) == (4, "d", 5, 4)


async def test_a_slow_client_gets_merged_deltas_and_an_interrupt_drops_only_what_it_never_got(harness):
    """With the edge's queue of this request full (2 deltas here), the owner holds new text back and numbers it
    as one delta when the edge takes one; the merged delta leaves only once journaled; an interrupt drops the
    held text, and its acknowledgement's last seq is the last delta the edge was given."""
    from flint.frontend.outbox import BufferBudget, BufferLimits, Outbox

    outbox = Outbox(BufferBudget(BufferLimits(queued_deltas_per_request=2)))
    harness.engine.scripts.append([started(), *(delta(c) for c in "abcdef"), HOLD])
    owner = await harness.start(outbox=outbox)
    await until(lambda: outbox.held_bytes == 4)          # a, b queued; c..f held back
    got = [await outbox.get() for _ in range(4)]         # Accepted, a, b, then c..f merged
    assert [(d.seq, d.text, d.token_count) for d in deltas(got)] == [(1, "a", 1), (2, "b", 1), (3, "cdef", 4)]
    assert got[-1] in await harness.journaled()          # sent only once the journal held it
    harness.engine.scripts.append([])
    result = await owner.interrupt()
    assert result.last_seq == 3 and outbox.held_bytes == 0 and outbox.budget.bytes == 0
    end = await outbox.get()
    assert isinstance(end, ev.Final) and end.seq == 4 and end.completion_tokens == 6
    assert await harness.journaled() == [*got, end]


async def test_held_text_past_the_stream_cap_ends_the_request_resource_exhausted(harness):
    from flint.errors import ResourceExhausted
    from flint.frontend.outbox import BufferBudget, BufferLimits, Outbox

    outbox = Outbox(BufferBudget(BufferLimits(queued_deltas_per_request=1, max_buffered_bytes_per_stream=1024)))
    harness.engine.scripts.append([started(), *(delta("x" * 300) for _ in range(6)), HOLD])
    owner = await harness.start(outbox=outbox)
    await owner.wait()
    await asyncio.wait_for(harness.engine.cancelled.wait(), 5)   # the engine call was cancelled
    items = [await outbox.get() for _ in range(len(outbox))]
    assert [type(e) for e in items] == [ev.Accepted, ev.Delta, ev.Failed]
    assert isinstance(items[-1].error, ResourceExhausted) and "read the stream too slowly" in items[-1].error.message
    assert outbox.budget.bytes == 0 and outbox.budget.refused == 1
    assert (await harness.store.get_request("r-1")).state == "failed"


# ---------------------------------------------------------------- the claim beside the engine call
def claiming_owner(harness, request_id="r-1"):
    """An owner that claims its id itself, beside opening the engine call (as the servicer starts one)."""
    record = RequestRecord(request_id=request_id, owner="w-claim", replica_id=harness.replica.replica_id)
    return RequestOwner(record=record, engine_request=ipb.GenerateRequest(request_id=request_id), pool=harness.pool,
                        replica=harness.replica, store=harness.store, local=harness.local,
                        sink=harness.events.append, claim=harness.store.claim_request(record))


async def test_engine_call_opens_while_the_claim_is_in_flight_and_nothing_is_delivered_before_it_holds(harness):
    harness.engine.scripts.append([started(), delta("a"), final(1)])
    await harness.redis.execute_command("CLIENT", "PAUSE", 400, "WRITE")   # the claim script waits
    owner = claiming_owner(harness)
    owner.start()
    await until(lambda: len(harness.engine.requests) == 1)  # the engine has the request, the claim is still held
    await asyncio.sleep(0.1)
    assert harness.events == [] and "r-1" not in harness.local
    await owner.claimed()
    await owner.wait()
    assert [type(e) for e in harness.events] == [ev.Accepted, ev.Delta, ev.Final]
    assert (await harness.store.get_request("r-1")).state == "finished"


async def test_a_refused_claim_cancels_the_engine_call_and_touches_nothing_of_the_running_holder(harness):
    harness.engine.scripts.append([started(), delta("a"), HOLD])
    holder = await harness.start("r-1")
    await until(lambda: text(harness.events) == "a")
    seen = len(harness.events)
    harness.engine.scripts.append([HOLD])   # the second call's engine sends nothing: the refusal must end it
    harness.engine.cancelled.clear()
    await harness.redis.execute_command("CLIENT", "PAUSE", 200, "WRITE")   # the claim waits: the call opens
    owner = claiming_owner(harness, "r-1")
    owner.start()
    await until(lambda: len(harness.engine.requests) == 2)
    with pytest.raises(InvalidArgument, match="already in use"):
        await owner.claimed()
    await owner.wait()
    await asyncio.wait_for(harness.engine.cancelled.wait(), 5)
    assert len(harness.events) == seen and not holder.done
    assert harness.local.get("r-1") is holder
    record = await harness.store.get_request("r-1")
    assert record.running and record.owner == "w-test"
    await holder.cancel()


async def test_cancel_while_the_claim_is_in_flight_frees_the_engine_and_leaves_no_running_record(harness):
    harness.engine.scripts.append([HOLD])
    await harness.redis.execute_command("CLIENT", "PAUSE", 300, "WRITE")
    owner = claiming_owner(harness)
    owner.start()
    await until(lambda: len(harness.engine.requests) == 1)
    await owner.cancel()   # returns once the claim's outcome is known and the end is recorded
    await asyncio.wait_for(harness.engine.cancelled.wait(), 5)
    assert harness.events == [] and "r-1" not in harness.local
    record = await harness.store.get_request("r-1")
    assert record is not None and not record.running


async def test_the_end_is_recorded_when_the_journal_has_nothing_to_carry_it(harness):
    # The record of the end rides the journal's last batch; a request the engine refused before its Started
    # journals nothing, and its record is written on its own, deleting the journal start its claim wrote (a
    # refused prompt is not kept, and a Resume of it is NOT_FOUND rather than a takeover that runs it again).
    record = RequestRecord(request_id="r-1", owner="w-test", replica_id=harness.replica.replica_id)
    deletes, writes = harness.journal.begin_writes("r-1", b"", model="m")
    await harness.store.claim_request(record, deletes=deletes, writes=writes)
    assert await harness.journal.meta("r-1") is not None
    harness.engine.scripts.append([(grpc.StatusCode.INVALID_ARGUMENT, "prompt too long")])
    owner = RequestOwner(record=record, engine_request=ipb.GenerateRequest(request_id="r-1"), pool=harness.pool,
                         replica=harness.replica, store=harness.store, local=harness.local,
                         sink=harness.events.append, journal=RequestJournal(harness.journal, "r-1", begun=True))
    owner.start()
    await owner.wait()
    assert [type(e) for e in harness.events] == [ev.Failed]
    assert (await harness.store.get_request("r-1")).state == "failed"
    assert await harness.journal.meta("r-1") is None


async def test_a_resume_between_the_accepted_and_the_first_delta_finds_the_request(harness):
    # The Accepted's journal entry waits for the first delta (journal.start_delay_ms); the journal's start went
    # with the claim, so a client that resumes in that window follows the request instead of getting NOT_FOUND.
    from flint.frontend.resume import Resumer

    harness.journal = Journal(harness.redis, harness.prefix, JournalConfig(start_delay_ms=1000), batches=harness.batches)
    record = RequestRecord(request_id="r-1", owner="w-test", replica_id=harness.replica.replica_id)
    deletes, writes = harness.journal.begin_writes("r-1", b"", model="m")
    harness.engine.scripts.append([started(), HOLD])
    owner = RequestOwner(record=record, engine_request=ipb.GenerateRequest(request_id="r-1"), pool=harness.pool,
                         replica=harness.replica, store=harness.store, local=harness.local,
                         sink=harness.events.append, journal=RequestJournal(harness.journal, "r-1", begun=True),
                         claim=harness.store.claim_request(record, deletes=deletes, writes=writes))
    owner.start()
    await owner.claimed()
    await until(lambda: harness.events)
    assert [type(e) for e in harness.events] == [ev.Accepted]
    assert await harness.redis.xlen(harness.journal.stream_key("r-1")) == 0   # its entry still waits
    resumer = Resumer(worker_id="w-test", store=harness.store, journal=harness.journal, liveness=None,
                      pool=harness.pool, local=harness.local)
    follow = resumer.resume("r-1", 0)
    first = asyncio.ensure_future(follow.__anext__())
    await asyncio.sleep(0.2)
    assert not first.done()                    # following the running request, not NOT_FOUND
    result = await owner.interrupt()           # the end writes the waiting batch at once
    assert result.was_running
    assert isinstance(await first, ev.Accepted)
    assert isinstance(await follow.__anext__(), ev.Final)
    await follow.aclose()


async def test_a_short_request_journals_in_one_batch(harness):
    # Per request: the claim (with the journal's start) and one batch: the Accepted waits for the first delta,
    # the delta for more entries (journal.delta_delay_ms), the Final for the record of the end, which goes at once.
    from flint.observability.metrics import metrics

    def batches() -> float:
        return metrics().registry.get_sample_value("flint_redis_call_seconds_count", {"op": "journal_flush"}) or 0

    harness.journal = Journal(harness.redis, harness.prefix, JournalConfig(start_delay_ms=1000, delta_delay_ms=1000), batches=harness.batches)
    record = RequestRecord(request_id="r-1", owner="w-test", replica_id=harness.replica.replica_id)
    deletes, writes = harness.journal.begin_writes("r-1", b"", model="m")
    harness.engine.scripts.append([started(), delta("a"), final(1)])
    before = batches()
    owner = RequestOwner(record=record, engine_request=ipb.GenerateRequest(request_id="r-1"), pool=harness.pool,
                         replica=harness.replica, store=harness.store, local=harness.local,
                         sink=harness.events.append, journal=RequestJournal(harness.journal, "r-1", begun=True),
                         claim=harness.store.claim_request(record, deletes=deletes, writes=writes))
    owner.start()
    async with asyncio.timeout(5):   # far below start_delay_ms: nothing waited for the delay
        await owner.wait()
    assert [type(e) for e in await harness.journaled()] == [ev.Accepted, ev.Delta, ev.Final]
    assert (await harness.store.get_request("r-1")).state == "finished"
    assert batches() - before == 1
