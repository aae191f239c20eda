"""One owner per request, from the engine call to the client.

A `RequestOwner` makes the engine call (and makes it again on another
replica when the first one refuses the connection), numbers the deltas the
client sees (the only seq numbering there is), journals every event for
resume, delivers it to its edge as a front-end event (flint.frontend.events),
and ends the request with exactly one Final or Failed: live, interrupted,
error, or after a takeover. It is driven two ways:

- live: the servicer picks a replica and starts an owner whose sink is the
  client's stream; the owner claims the request id in Redis while it opens
  the engine call, and holds the engine's first event until the claim holds
  (a refused claim cancels the engine call; nothing is delivered or written);
- takeover: a resume finds a request nobody produces any more, claims it and
  starts an owner from the journal's `ResumePoint`; the owner runs the
  request again and skips the text already journaled, verified character
  for character (the front-end pins a sampling seed on every request, so a
  run again reproduces it), with seqs continuing where the journal stopped.

Ordering: each event is handed to the edge at once and queued for the
journal, which follows in batches (Redis is off the per-delta path); one
engine delta makes one client delta, so a run again numbers deltas the
same way and a takeover can skip the ones a client has beyond the journal.
Backpressure (flint.frontend.outbox): while the edge has a full queue of
this request's deltas waiting for a slow client, new text is held back,
merged, and numbered as one delta when the edge takes one of them; a merged delta
reaches the client only after the journal holds it (so the one-per-engine-
delta numbering of a takeover still holds after the journal's end). Held
text past the stream's or worker's cap ends the request RESOURCE_EXHAUSTED.
To interrupt, the owner's task is cancelled (which cancels the engine call,
so the engine frees the slot at its next step) and, in the interrupter's
own step when the request is running and its claim held, the interrupted
Final is delivered and the record of the end queued behind the journal's
entries, with the acknowledgement a cross-worker interrupter waits for
(`AckTo`) behind that record: one Redis round trip, sent as soon as the
journal's batch in flight (if any) is back, and no wait for the owner's
task to run. The end is recorded *before* `interrupt()` returns and before
that acknowledgement is published, so it can promise that no delta with a
higher seq will come. `last_seq` is updated with no await between it and
the delivery of that delta.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import Callable

import grpc

from flint.errors import FlintError, Internal, NotFound, Unavailable
from flint.frontend import events as ev
from flint.frontend.interrupts import AckTo, InterruptResult
from flint.frontend.liveness import EngineWatch, engine_call_timeout_s
from flint.frontend.outbox import HeldText
from flint.frontend.store import RequestRecord, Store
from flint.grpc_status import from_rpc_error, peer_unavailable
from flint.internal.v1 import engine_pb2 as ipb

log = logging.getLogger(__name__)

MAX_CONNECT_ATTEMPTS = 3  # replicas tried when each refuses the connection before sending anything


@dataclass(frozen=True)
class ResumePoint:
    """Where a request's journal stops: a takeover's owner continues after it."""

    seq: int = 0                  # seq of the last journaled delta
    chars: int = 0                # completion characters journaled
    tokens: int = 0               # tokens the journaled deltas cover
    text: str | None = ""         # the journaled completion text (None once its start was trimmed)
    accepted: bool = False        # an Accepted is journaled already
    client_seq: int = 0           # the resuming client's last seq (may be past `seq`: the journal lags)


START = ResumePoint()


class LocalRequests:
    """The requests this worker owns right now, by id: what interrupts and resumes reach locally."""

    def __init__(self) -> None:
        self._owners: dict[str, RequestOwner] = {}

    def add(self, owner: "RequestOwner") -> None:
        self._owners[owner.request_id] = owner

    def discard(self, owner: "RequestOwner") -> None:
        if self._owners.get(owner.request_id) is owner:
            del self._owners[owner.request_id]

    def get(self, request_id: str) -> "RequestOwner | None":
        return self._owners.get(request_id)

    def ids(self) -> list[str]:
        return list(self._owners)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._owners

    def __len__(self) -> int:
        return len(self._owners)


async def to_completion(work):
    """Run `work` to completion even if the calling task is cancelled meanwhile (then re-raise nothing: the
    caller is already stopping, and cutting this short would lose a Final, the record of an end, or leave a
    request marked running with nobody producing it)."""
    inner = asyncio.ensure_future(work)
    while not inner.done():
        try:
            await asyncio.wait({inner})
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()
    return inner.result()


def open_engine_call(pool, replica, engine_request: ipb.GenerateRequest, metadata=()) -> tuple:
    """(stub, call): `engine_request`'s `Generate` call on `replica`, with its deadline (flint.frontend.liveness)."""
    stub = pool.stub(replica)
    return stub, stub.Generate(engine_request, metadata=metadata, timeout=engine_call_timeout_s(
        pool.liveness, engine_request.sampling.max_time_ms))


class _NotClaimed(Exception):
    """The request's claim failed while its engine call was open."""


class RequestOwner:
    def __init__(self, *, record: RequestRecord, engine_request: ipb.GenerateRequest, pool, replica,
                 store: Store, local: LocalRequests, sink: Callable[[ev.Event], None], journal=None,
                 resume_from: ResumePoint = START, model: str = "",
                 on_done: Callable[["RequestOwner"], None] | None = None, metadata=(), outbox=None,
                 claim=None, opened: tuple | None = None):
        self.record = record
        self.request_id = record.request_id
        self.engine_request = engine_request
        self.last_seq = resume_from.seq    # seq of the last delta delivered
        self.prompt_tokens = 0
        self._tokens = resume_from.tokens  # tokens covered by the deltas delivered (and journaled before)
        self._pool = pool
        self._replica = replica
        self._model = model or replica.model
        self._store = store
        self._local = local
        self._sink = sink
        self._journal = journal           # flint.frontend.journal.RequestJournal, or None
        self._on_done = on_done
        self._metadata = metadata          # trace context for the engine call (flint.observability.tracing)
        self._skip_chars = resume_from.chars
        self._expected = resume_from.text
        self._accepted = resume_from.accepted
        self._seq = resume_from.seq        # seq given to the last delta built
        self._produced = 0                 # completion characters (re)generated by the current engine call
        self._ended = False                # a Final or Failed has been delivered
        self._interrupting = False
        self._interrupt_honoured = False   # the request ended with an interrupted Final (or was already ending so)
        self._stopping = False             # the task has been cancelled (interrupt() or cancel()): once only
        self._started = False              # the task has begun `_run`
        self._interrupted: asyncio.Future | None = None  # the one interrupt every caller awaits
        # Acknowledgements to publish with the record of the end (None once it is queued), and those published
        self._acks: list[AckTo] | None = []
        self._acked: set[AckTo] = set()
        self._end: asyncio.Future | None = None    # the record of the end: queued once, however the request ends
        self._client_seq = resume_from.client_seq  # deltas up to this seq are journaled, not delivered
        self._task: asyncio.Task | None = None
        # (stub, call): the first engine call, opened by `start()` or, before the owner was built, by its driver
        # (`open_engine_call`; the owner cancels it if it ends without taking it over)
        self._opened: tuple | None = opened
        # The request's registration in Redis (a coroutine: `Store.claim_request`), run beside the opening of
        # the engine call; nothing is delivered, journaled or recorded before it succeeded. None: registered.
        self._claim_work = claim
        self._claim: asyncio.Future | None = None
        self._left = False                 # the owner has left `LocalRequests` (or never may join it)
        self._outbox = outbox              # flint.frontend.outbox.Outbox the sink feeds, or None (no backpressure)
        # Text held back while the client is behind, charged to the outbox's caps.
        self._held = HeldText(outbox, self.request_id, self._release_held) if outbox is not None else None

    # ------------------------------------------------------------ control
    def start(self) -> None:
        # The engine call first: its round trip is the longest, and the claim's Redis write and the task's
        # first step then overlap it instead of preceding it.
        if self._opened is None:
            self._opened = self._open_call()
        if self._claim_work is None:
            self._local.add(self)
        else:  # join `LocalRequests` only once the id is ours: a refused claim must not shadow its holder
            self._claim = asyncio.ensure_future(self._claim_work)
            self._claim.add_done_callback(self._on_claimed)
        self._task = asyncio.create_task(self._run(), name=f"request {self.request_id}")

    def _on_claimed(self, claim: asyncio.Future) -> None:
        if claim.cancelled() or claim.exception() is not None:
            self.cancel_soon()      # refused: end the engine call now, even while the engine is silent
        elif not self._left:
            self._local.add(self)

    async def claimed(self) -> None:
        """Return once the request's claim succeeded; raise its error (the id is in use, Redis failed) if it
        did not: the owner then ends without delivering or recording anything and its engine call is cancelled.
        Cancelling the caller leaves the claim running (the owner learns its outcome)."""
        if self._claim is not None:
            await asyncio.shield(self._claim)

    async def _claim_ok(self) -> bool:
        """Wait for the claim (never cut short: its outcome decides what the end may write); True if it held."""
        if self._claim is None:
            return True
        await asyncio.wait({self._claim})
        return not self._claim.cancelled() and self._claim.exception() is None

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait(self) -> None:
        if self._task is not None:
            await asyncio.wait({self._task})

    async def interrupt(self) -> InterruptResult:
        """Stop, cancel the engine call, deliver the interrupted Final, record the end; then the caller may
        acknowledge.

        Idempotent: the owner hears one cross-worker interrupt twice (pub/sub and the flag poll), so every
        caller after the first awaits the first one's stop and gets the same result; the shield keeps one
        caller going away (a cancelled ack task) from abandoning the stop for the others."""
        return await asyncio.shield(self.interrupt_soon())

    def interrupt_soon(self, ack: AckTo | None = None) -> asyncio.Future:
        """`interrupt()` started in the caller's step; the future gives its `InterruptResult`. With `ack`, the
        owner publishes the interrupter's acknowledgement itself, behind the record of the end (then the result
        says `acknowledged`), if that record is not queued yet; else the caller acknowledges."""
        if self._interrupted is None:
            if self._ended or self._task is None or self._task.done():
                return asyncio.ensure_future(self._not_running())
            # Decided here, in the caller's step, not in a task of its own: a cancel (the client going away)
            # that the owner's task handles after this point must still end the request with the interrupted
            # Final the interrupter is promised. Also after cancel(), while the task has not yet handled it.
            self._interrupting = True
            self._take_ack(ack)
            # Running, nobody cancelled it yet and the id is ours: the Final and the record of the end need
            # nothing from the task. Else (a cancel is pending, the claim is not settled) the task ends it.
            if not self._stopping and self._claim_held():
                self._interrupt_honoured = True
                # The acknowledgement's round trip is the long pole: its batch starts before the edge writes the
                # Final and the task handles its cancel (the loop runs them in the order they were scheduled).
                final = self._final_interrupted()
                self._emit(final, deliver=False)
                self._record_end("interrupted")
                self._sink(final)
            self._cancel_once()
            self._interrupted = asyncio.ensure_future(self._stopped_by_interrupt())
        else:
            self._take_ack(ack)
        if ack is None:
            return self._interrupted
        return asyncio.ensure_future(self._answer(ack))

    def _take_ack(self, ack: AckTo | None) -> None:
        """Publish `ack` with the record of the end, unless that record is queued already."""
        if ack is not None and self._acks is not None:
            self._acks.append(ack)

    async def _answer(self, ack: AckTo) -> InterruptResult:
        result = await asyncio.shield(self._interrupted)
        return replace(result, acknowledged=ack in self._acked)

    async def _not_running(self) -> InterruptResult:
        await self.wait()
        return InterruptResult(self.request_id, False, self.last_seq)

    def _claim_held(self) -> bool:
        claim = self._claim
        return claim is None or (claim.done() and not claim.cancelled() and claim.exception() is None)

    async def _stopped_by_interrupt(self) -> InterruptResult:
        await asyncio.wait({self._task})
        # False when the task had already handled a cancel as the client's before the interrupt came
        return InterruptResult(self.request_id, self._interrupt_honoured, self.last_seq)

    async def cancel(self) -> None:
        """The client went away: cancel the engine call without delivering anything."""
        if self._task is not None and not self._task.done():
            self._cancel_once()
            await asyncio.wait({self._task})

    def _cancel_once(self) -> None:
        """A second cancel would land in the owner's end-of-request work (see `to_completion`). A task
        cancelled before its first step would never run `_run`'s cleanup: `_run` checks the flag instead."""
        if not self._stopping:
            self._stopping = True
            if self._started:
                self._task.cancel()

    def add_done_callback(self, fn: Callable[[], None]) -> None:
        """Call `fn` once the request has ended, however (after its end is recorded)."""
        self._task.add_done_callback(lambda _task: fn())

    def cancel_soon(self) -> None:
        """`cancel()` from a callback: the call ended (the client went away, maybe before the handler ran)."""
        if self._task is not None and not self._task.done():
            self._cancel_once()

    # ------------------------------------------------------------ the request
    async def _run(self) -> None:
        state, ending = "failed", None
        self._started = True
        try:
            if self._stopping:  # cancelled before this task ran
                raise asyncio.CancelledError
            await self._generate()
            state = "finished"
        except asyncio.CancelledError:
            state = "interrupted"
            if not self._interrupting:
                raise
            ending = "interrupted"
            if not self._ended:   # else the live Final went out first (or interrupt_soon's)
                self._interrupt_honoured = True
        except FlintError as error:
            ending = error
        except _NotClaimed:
            pass
        finally:
            try:
                if await to_completion(self._claim_ok()):
                    if ending == "interrupted" and not self._ended:
                        self._emit(self._final_interrupted())
                    elif isinstance(ending, FlintError):
                        # Retryable (the replica went away): not journaled, so a resume runs the request again.
                        self._emit(ev.Failed(self.request_id, ending), journal=not ending.retryable)
                    # journal, then record: a record that is no longer running promises a whole journal
                    self.record = await to_completion(self._record_end(state))
                else:  # the id was not ours: nothing was delivered; the caller of claimed() reports why
                    self.record = replace(self.record, state="failed")
            except Exception as exc:  # noqa: BLE001 - the stream already ended; the record expires
                log.warning("could not record the end of request %s: %s", self.request_id, exc)
            finally:
                if self._opened is not None:   # stopped before `_generate` took the call over
                    self._opened[1].cancel()
                    self._opened = None
                if self._held is not None:
                    self._held.drop()
                self._left = True
                self._local.discard(self)
                if self._on_done is not None:
                    self._on_done(self)

    def _record_end(self, state: str) -> asyncio.Future:
        """Queue the record of the end, once (whichever comes first: the task's end or `interrupt_soon`), with
        the interrupters' acknowledgements behind it; the future gives the ended record once it is in Redis.
        The record rides the journal's last batch (one round trip, after the journal's entries); when the journal
        lost entries it is written alone, after the journal's gap is marked; when it holds nothing of a new
        request, with the deletion of the journal's start (its claim wrote it)."""
        if self._end is None:
            acks, self._acks = self._acks, None
            result = InterruptResult(self.request_id, self._interrupt_honoured, self.last_seq)
            publishes = [(ack.channel, ack.message(result)) for ack in acks]
            done, write = self._store.finish_write(self.record, state, self.last_seq)
            queued = self._journal is not None and self._journal.then([write], publishes)
            self._end = asyncio.ensure_future(self._recorded(done, state, acks, publishes, queued))
        return self._end

    async def _recorded(self, done: RequestRecord, state: str, acks: list[AckTo], publishes: list,
                        queued: bool) -> RequestRecord:
        if self._journal is None:
            done = await self._store.finish_request(self.record, state, self.last_seq, publishes=publishes)
        elif not (await self._journal.settle() and queued):
            done = await self._store.finish_request(self.record, state, self.last_seq, publishes=publishes,
                                                    deletes=self._journal.unused_keys())
        self._acked.update(acks)
        return done

    async def _generate(self) -> None:
        """Run the request on a replica to its Final; on a refused connection, on another replica."""
        tried: set[str] = set()
        liveness = self._pool.liveness
        while True:
            (stub, call), self._opened = self._opened or self._open_call(), None
            watch = EngineWatch(liveness, self._prober(stub),
                                f"{self._replica.replica_id} at {self._replica.address}")
            watch.start(call)
            heard = finished = False
            try:
                async for event in call:
                    if not heard and self._claim is not None and not self._claim.done():
                        await self._claimed_or_stop()  # hold the first event back until the id is ours
                    heard = True
                    watch.heard()
                    kind = event.WhichOneof("kind")
                    if kind == "final":
                        # The edge writes what it was given first (the last delta often comes in the same read
                        # as the Final): the request's end work below would otherwise run before it.
                        await asyncio.sleep(0)
                    if self._on_engine_event(event, kind):
                        finished = True
                        return
                raise Internal(f"engine replica {self._replica.replica_id} ended the stream of request "
                               f"{self.request_id!r} without a final message")
            except grpc.aio.AioRpcError as err:
                if watch.failure is not None:
                    raise self._frozen(watch) from None
                if err.code() == grpc.StatusCode.UNAVAILABLE and not heard and len(tried) + 1 < MAX_CONNECT_ATTEMPTS:
                    tried.add(self._replica.replica_id)
                    await self._next_replica(tried, err)
                    continue
                raise self._engine_error(err) from None
            except asyncio.CancelledError:
                if watch.failure is None or self._stopping:   # an interrupt or cancel, not the watch
                    raise
                raise self._frozen(watch) from None
            finally:
                if not finished:   # a call past its Final ends by itself: a cancel would cost the replica a RST_STREAM
                    call.cancel()
                await watch.stop()

    def _open_call(self) -> tuple:
        return open_engine_call(self._pool, self._replica, self.engine_request, self._metadata)

    async def _claimed_or_stop(self) -> None:
        if not await self._claim_ok():
            raise _NotClaimed  # ends the engine call; `_run` then writes nothing

    @staticmethod
    def _frozen(watch: EngineWatch) -> Unavailable:
        return Unavailable(f"{watch.failure}: it looks frozen or cut off; resume the request (Resume with its id "
                           "and last seq) or send it again", retry_after_ms=100)

    def _prober(self, stub):
        async def probe(timeout_s: float) -> None:
            await stub.Load(ipb.LoadRequest(), timeout=timeout_s)
        return probe

    async def _next_replica(self, tried: set[str], err: grpc.aio.AioRpcError) -> None:
        """The replica refused before sending anything: drop it from routing and pick another."""
        log.info("engine replica %s at %s refused request %s (%s); trying another", self._replica.replica_id,
                 self._replica.address, self.request_id, err.details())
        self._pool.drop(self._replica)
        try:
            self._replica = await self._pool.pick(model=self._model, exclude=tried)
        except (Unavailable, NotFound):
            raise self._engine_error(err) from None
        self.record = replace(self.record, replica_id=self._replica.replica_id)

    def _engine_error(self, err: grpc.aio.AioRpcError) -> FlintError:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
            return peer_unavailable("the engine replica serving this request", err, peer=self._replica.address,
                                    hint="resume the request (Resume with its id and last seq) or send it again")
        return from_rpc_error(err, peer=f"engine replica {self._replica.address}")

    # ------------------------------------------------------------ engine events -> front-end events
    def _on_engine_event(self, event: ipb.GenerateEvent, kind: str) -> bool:
        """Turn one engine event (of oneof `kind`) into front-end events; True at the Final."""
        if kind == "delta":
            self._delta(event.delta.text, event.delta.token_count)
        elif kind == "deltas":   # engine deltas the replica sent together: numbered one by one all the same
            for delta in event.deltas.items:
                self._delta(delta.text, delta.token_count)
        elif kind == "started":
            self.prompt_tokens = event.started.prompt_tokens
            self._produced = 0
            if not self._accepted:
                self._accepted = True
                self._emit(ev.Accepted(self.request_id, event.started.prompt_tokens), deliver=self._client_seq == 0)
        elif kind == "final":
            self._release_held()
            if self._produced < self._skip_chars:
                raise self._cannot_resume("running it again gave less text than was already sent")
            if self._seq < self._client_seq:
                raise self._cannot_resume(f"last_seq {self._client_seq} is past its end (seq {self._seq}); "
                                          "was it sent by this deployment?")
            self._emit(self._final(event.final))
            return True
        return False

    def _delta(self, text: str, token_count: int) -> None:
        """The next delta: one per engine delta, so a run again numbers them as the first run did. Text the
        journal holds is skipped (and checked); deltas the client holds are journaled, not delivered."""
        start = self._produced
        self._produced += len(text)
        if start < self._skip_chars:
            kept = max(0, self._produced - self._skip_chars)
            self._verify(start, text[: len(text) - kept])
            if not kept:
                return
            if self._client_seq > self._seq:  # the client's deltas past the journal can no longer be matched
                raise self._cannot_resume("running it again split its deltas differently")
            text = text[len(text) - kept:]
        if self._held is not None and self._seq >= self._client_seq and (
                self._held or self._outbox.backed_up(self.request_id)):
            self._held.add(text, token_count)   # RESOURCE_EXHAUSTED past the stream's or the worker's cap
            return
        self._seq += 1
        self._emit(ev.Delta(self.request_id, self._seq, text, token_count), deliver=self._seq > self._client_seq)

    def _release_held(self) -> None:
        """The edge took one of the waiting deltas (or the request ends): the held text goes out as one delta."""
        if not self._held or self._ended or self._stopping:   # an interrupt drops what the client never had
            return
        text, tokens, parts = self._held.take()
        self._seq += 1
        if parts > 1 and self._journal is not None:   # merged: a takeover could not number it the same way
            self._outbox.settle_first(self.request_id, self._journal.settle)
        self._emit(ev.Delta(self.request_id, self._seq, text, tokens))

    def _cannot_resume(self, why: str) -> NotFound:
        return NotFound(f"request {self.request_id!r} cannot be resumed: {why}; send the request again")

    def _verify(self, start: int, text: str) -> None:
        if self._expected is not None and self._expected[start:start + len(text)] != text:
            raise self._cannot_resume("running it again gave different text than was already sent (model or "
                                      "sampling changed)")

    def _final(self, f: ipb.Final) -> ev.Final:
        return ev.Final(
            request_id=self.request_id, seq=self._seq + 1, finish_reason=ev.FinishReason(f.finish_reason),
            prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens,
            cached_prompt_tokens=f.cached_prompt_tokens, draft_tokens=f.draft_tokens,
            accepted_draft_tokens=f.accepted_draft_tokens, replica_id=self.record.replica_id,
            withheld_tokens=f.withheld_tokens, timings=ev.Timings(queue_ms=f.queue_ms, prefill_ms=f.prefill_ms, first_token_ms=f.first_token_ms,
                               decode_ms=f.decode_ms, total_ms=self._total_ms()))

    def _final_interrupted(self) -> ev.Final:
        return ev.Final(request_id=self.request_id, seq=self.last_seq + 1, finish_reason=ev.FinishReason.INTERRUPTED,
                        prompt_tokens=self.prompt_tokens, completion_tokens=self._tokens,
                        replica_id=self.record.replica_id, timings=ev.Timings(total_ms=self._total_ms()))

    def _total_ms(self) -> float:
        """Front-end arrival of the request (the first one, for a takeover) to now."""
        return (time.time() - self.engine_request.arrival_unix_s) * 1000.0

    # ------------------------------------------------------------ delivery
    def _emit(self, event: ev.Event, *, deliver: bool = True, journal: bool = True) -> None:
        """Hand the event to the edge and queue it for the journal, with no await in between (so last_seq is
        the seq of the last delta the client has). The edge first: the journal's batch (a Redis write) then
        starts after the edge's writer has been woken, not before it. The journal follows in batches."""
        if isinstance(event, ev.Delta):
            self.last_seq = event.seq
            self._tokens += event.token_count
        elif ev.is_terminal(event):
            if self._ended:
                return
            self._ended = True
        if deliver:
            self._sink(event)
        if journal and self._journal is not None:
            self._journal.write(event)
