"""Resume: reattach to a request from any front-end worker, exactly once by seq.

A resume first replays the request's journal after the client's last seq,
then follows the journal live (XREAD) while the owning worker keeps relaying.
When nobody produces it any more (the owner died, the client's disconnect
cancelled it, or its engine replica died) and it has no final, this worker
takes the request over: it claims the request record (compare-and-set in
Redis, so two resumes never both take over), runs it again on a live replica
and journals only the text past what was already journaled, verified
character for character, with seqs continuing where the journal stopped.
Regeneration reproduces the text because the front-end pins a sampling seed
on every request it journals (greedy decoding is deterministic anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import asdict, replace

import grpc
import msgpack

from flint.errors import FlintError, NotFound, Unavailable
from flint.frontend.interrupts import InterruptResult
from flint.frontend.journal import Journal, RequestJournal, WorkerLiveness
from flint.frontend.routing import LeastLoaded
from flint.frontend.session import request_error
from flint.frontend.store import RUNNING, RequestRecord, Store
from flint.frontend.validate import check_request_id
from flint.grpc_status import from_rpc_error
from flint.internal.v1 import engine_pb2 as ipb
from flint.observability.metrics import metrics
from flint.v1 import flint_pb2 as pb

log = logging.getLogger(__name__)


def incomplete(request_id: str, why: str) -> NotFound:
    return NotFound(f"request {request_id!r} cannot be resumed: {why}; send the request again")


class Resumer:
    def __init__(self, *, worker_id: str, store: Store, journal: Journal, liveness: WorkerLiveness, pool,
                 local: dict):
        self.worker_id = worker_id
        self.store = store
        self.journal = journal
        self.liveness = liveness
        self.pool = pool
        self.local = local
        self.resumed = 0
        self.taken_over = 0

    async def resume(self, request_id: str, last_seq: int, tenant: str = ""):
        """Yield the missing messages of `request_id` after `last_seq`, then the live rest, ending at its final.

        A journaled RequestError is yielded too (the caller turns it into a status).
        """
        check_request_id(request_id)
        meta = await self.journal.meta(request_id)
        if meta is None or meta.tenant != tenant:  # another tenant's id looks exactly like an unknown one
            raise NotFound(f"no resumable request with id {request_id!r} (unknown, expired, or not yours); "
                           "send the request again")
        if await self.journal.has_gap(request_id):
            raise incomplete(request_id, "its journal has a gap (Redis was unavailable while it ran)")
        self.resumed += 1
        metrics().resumes.inc()
        state = _Replay(request_id, last_seq)
        after = b"-"
        block_ms = None
        continuation: Continuation | None = None
        try:
            while True:
                for entry in await self.journal.read(request_id, after, block_ms=block_ms):
                    after = entry.stream_id
                    message = state.take(entry)
                    if message is not None:
                        yield message
                    if entry.terminal:
                        return
                if block_ms is None:
                    state.check_client_seq()
                    block_ms = int(self.journal.config.poll_interval_ms)
                if continuation is None and not await self._someone_produces(request_id):
                    continuation = await self._take_over(request_id, meta, state)
                elif continuation is not None and continuation.done and not state.ended:
                    # It ended: everything it journaled is read on the next round; stop if nothing came.
                    rest = await self.journal.read(request_id, after)
                    if not rest:
                        raise Unavailable(f"request {request_id!r} stopped without a final message; resume again")
        finally:
            if continuation is not None and not continuation.done:
                await continuation.cancel()  # the resuming client went away: free the engine slot

    async def _someone_produces(self, request_id: str) -> bool:
        record = await self.store.get_request(request_id)
        if record is None or not record.running:
            return False
        if record.owner == self.worker_id:
            return request_id in self.local
        return await self.liveness.alive(record.owner)

    async def _take_over(self, request_id: str, meta, state: "_Replay") -> "Continuation | None":
        """Claim the request (CAS on its record) and regenerate it here; None if another worker got it."""
        record = await self._claim(request_id)
        if record is None:
            return None
        self.taken_over += 1
        metrics().takeovers.inc()
        engine_request = ipb.GenerateRequest.FromString(meta.request)
        # Its own engine-side id: the first run may still be on that replica's engine (its caller's cancel
        # has not reached it yet), and an engine refuses a second request with a running id.
        engine_request.request_id = f"{request_id}#takeover-{secrets.token_hex(4)}"
        continuation = Continuation(self, record, engine_request, model=meta.model, state=state)
        self.local[request_id] = continuation
        continuation.start()
        log.info("worker %s took over request %s after seq %d", self.worker_id, request_id, state.journal_seq,
                 extra={"request_id": request_id, "worker_id": self.worker_id})
        return continuation

    async def _claim(self, request_id: str) -> RequestRecord | None:
        key = self.store.request_key(request_id)
        async with self.store.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                data = await pipe.get(key)
                old = _unpack_record(data)
                if old is not None and old.running and (
                        old.owner == self.worker_id or await self.liveness.alive(old.owner)):
                    return None  # alive again, or claimed by another resume meanwhile
                record = RequestRecord(request_id=request_id, owner=self.worker_id, state=RUNNING,
                                       last_seq=old.last_seq if old else 0,
                                       session_id=old.session_id if old else "",
                                       replica_id=old.replica_id if old else "", created_unix_s=time.time(),
                                       tenant=old.tenant if old else "")
                pipe.multi()
                pipe.set(key, msgpack.packb(asdict(record)), px=self.store._request_ttl_ms)
                pipe.delete(self.store.flag_key(request_id))
                await pipe.execute()
                return record
            except Exception as exc:  # noqa: BLE001 - WatchError: someone else changed it first
                if type(exc).__name__ == "WatchError":
                    return None
                raise


def _unpack_record(data: bytes | None) -> RequestRecord | None:
    if data is None:
        return None
    fields = msgpack.unpackb(data)
    return RequestRecord(**{k: v for k, v in fields.items() if k in RequestRecord.__dataclass_fields__})


class _Replay:
    """What a resume has read from the journal and what the client still needs."""

    def __init__(self, request_id: str, last_seq: int):
        self.request_id = request_id
        self.client_seq = last_seq
        self.journal_seq = 0               # seq of the last journaled delta
        self.journal_chars = 0             # completion characters journaled
        self.text: list[str] | None = []  # journaled completion text (None once trimmed entries are seen)
        self.accepted: pb.ServerMessage | None = None
        self.ended = False

    def take(self, entry) -> pb.ServerMessage | None:
        message = pb.ServerMessage.FromString(entry.message)
        kind = message.WhichOneof("kind")
        if entry.terminal:
            self.ended = True
            return message
        if kind == "accepted":
            self.accepted = message
            return message if self.client_seq == 0 else None
        if kind != "delta":
            return None
        if self.journal_seq == 0 and entry.seq > 1:
            if entry.seq > self.client_seq + 1:
                raise incomplete(self.request_id, f"deltas {self.client_seq + 1}-{entry.seq - 1} expired "
                                 "from its journal")
            self.text = None
        elif self.journal_seq and entry.seq != self.journal_seq + 1:
            raise incomplete(self.request_id, f"its journal skips from seq {self.journal_seq} to {entry.seq}")
        self.journal_seq, self.journal_chars = entry.seq, entry.chars
        if self.text is not None:
            self.text.append(message.delta.text)
        return message if entry.seq > self.client_seq else None

    def check_client_seq(self) -> None:
        if not self.ended and self.client_seq > self.journal_seq:
            raise incomplete(self.request_id, f"last_seq {self.client_seq} is past its journal (seq "
                             f"{self.journal_seq}); was it sent by this deployment?")


class Continuation:
    """Runs a taken-over request again and journals only what comes after the journaled text."""

    def __init__(self, resumer: Resumer, record: RequestRecord, engine_request: ipb.GenerateRequest, *,
                 model: str, state: _Replay):
        self._resumer = resumer
        self.record = record
        self.request_id = record.request_id
        self._engine_request = engine_request
        self._model = model
        self._skip_chars = state.journal_chars
        self._expected = "".join(state.text) if state.text is not None else None
        self._need_accepted = state.accepted is None
        self.last_seq = state.journal_seq
        self._journal = RequestJournal(resumer.journal, self.request_id, chars=state.journal_chars)
        self._task: asyncio.Task | None = None
        self._interrupting = False
        self._prompt_tokens = 0
        self._completion_tokens = 0

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"continuation {self.request_id}")

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait({self._task})

    async def interrupt(self) -> InterruptResult:
        if self.done:
            return InterruptResult(self.request_id, False, self.last_seq)
        self._interrupting = True
        await self.cancel()
        return InterruptResult(self.request_id, True, self.last_seq)

    async def _run(self) -> None:
        state = "failed"
        try:
            await self._generate_on_some_replica()
            state = "finished"
        except asyncio.CancelledError:
            state = "interrupted"
            if self._interrupting:
                await self._journal.record(pb.ServerMessage(final=pb.Final(
                    request_id=self.request_id, seq=self.last_seq + 1, finish_reason=pb.FINISH_REASON_INTERRUPTED,
                    prompt_tokens=self._prompt_tokens, completion_tokens=self._completion_tokens,
                    replica_id=self.record.replica_id)))
            else:
                raise
        except FlintError as exc:
            if not exc.retryable:
                await self._journal.record(request_error(self.request_id, exc))
            log.warning("continuation of %s failed: %s", self.request_id, exc.message)
        finally:
            with contextlib.suppress(Exception):
                self.record = await self._resumer.store.finish_request(self.record, state, self.last_seq)
            if self._resumer.local.get(self.request_id) is self:
                del self._resumer.local[self.request_id]

    async def _generate_on_some_replica(self) -> None:
        pool = self._resumer.pool
        failed: set[str] = set()
        deadline = time.monotonic() + 10.0
        while True:
            candidates = [r for r in await pool.replicas(fresh=True) if r.routable and r.replica_id not in failed
                          and (not self._model or r.model == self._model)]
            if not candidates:
                if time.monotonic() > deadline:
                    raise Unavailable(f"no live engine replica to resume request {self.request_id!r} on")
                failed.clear()
                await asyncio.sleep(0.2)
                continue
            replica = LeastLoaded().choose(candidates)
            self.record = replace(self.record, replica_id=replica.replica_id)
            try:
                await self._generate(pool.stub(replica))
                return
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise from_rpc_error(err, peer=f"engine replica {replica.address}") from None
                failed.add(replica.replica_id)  # died since its last heartbeat: try another

    async def _generate(self, stub) -> None:
        produced = 0  # completion characters regenerated so far
        call = stub.Generate(self._engine_request)
        try:
            async for event in call:
                kind = event.WhichOneof("kind")
                if kind == "started":
                    self._prompt_tokens = event.started.prompt_tokens
                    if self._need_accepted:
                        self._need_accepted = False
                        await self._journal.record(pb.ServerMessage(accepted=pb.Accepted(
                            request_id=self.request_id, prompt_tokens=event.started.prompt_tokens)))
                elif kind == "delta":
                    text = event.delta.text
                    start, produced = produced, produced + len(text)
                    self._completion_tokens += event.delta.token_count
                    if produced <= self._skip_chars:
                        self._verify(start, text)
                        continue
                    if start < self._skip_chars:
                        self._verify(start, text[: self._skip_chars - start])
                        text = text[self._skip_chars - start:]
                    self.last_seq += 1
                    await self._journal.record(pb.ServerMessage(delta=pb.Delta(
                        request_id=self.request_id, seq=self.last_seq, text=text,
                        token_count=event.delta.token_count)))
                elif kind == "final":
                    if produced < self._skip_chars:
                        raise incomplete(self.request_id, "running it again gave less text than was already sent")
                    f = event.final
                    await self._journal.record(pb.ServerMessage(final=pb.Final(
                        request_id=self.request_id, seq=self.last_seq + 1, finish_reason=f.finish_reason,
                        prompt_tokens=f.prompt_tokens, completion_tokens=f.completion_tokens,
                        cached_prompt_tokens=f.cached_prompt_tokens, draft_tokens=f.draft_tokens,
                        accepted_draft_tokens=f.accepted_draft_tokens, replica_id=self.record.replica_id,
                        timings=pb.Timings(queue_ms=f.queue_ms, prefill_ms=f.prefill_ms,
                                           first_token_ms=f.first_token_ms, decode_ms=f.decode_ms,
                                           total_ms=f.total_ms))))
                    return
        finally:
            call.cancel()

    def _verify(self, start: int, text: str) -> None:
        if self._expected is not None and self._expected[start:start + len(text)] != text:
            raise incomplete(self.request_id, "running it again gave different text than was already sent "
                             "(model or sampling changed)")
