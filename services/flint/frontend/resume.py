"""Resume: reattach to a request from any front-end worker, exactly once by seq.

A resume first replays the request's journal after the client's last seq,
then follows the journal live (XREAD) while the owning worker keeps
producing it. When nobody produces it any more (the owner died, the
client's disconnect cancelled it, or its engine replica died) and it has no
final, this worker takes the request over: it claims the request record
(compare-and-set in Redis, so two resumes never both take over) and starts
a `RequestOwner` from the journal's `ResumePoint`, which runs it again,
skips what the journal holds, journals without delivering the deltas the
client holds beyond the journal (it follows the owner in batches, so it may
lag a client by a few deltas), and delivers the rest straight to this
client. This module is the takeover's driver;
the owner does the rest, as for a live request.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace

from flint.errors import NotFound
from flint.frontend import events as ev
from flint.frontend.heartbeat import WorkerLiveness
from flint.frontend.journal import Journal, RequestJournal
from flint.frontend.outbox import BufferBudget, Outbox
from flint.frontend.owner import LocalRequests, RequestOwner, ResumePoint
from flint.frontend.render import from_message
from flint.frontend.store import RUNNING, RequestRecord, Store
from flint.frontend.validate import check_request_id, public_request_id
from flint.records import pack_record, unpack_record
from flint.internal.v1 import engine_pb2 as ipb
from flint.observability.metrics import metrics
from flint.v1 import flint_pb2 as pb

log = logging.getLogger(__name__)


def incomplete(request_id: str, why: str) -> NotFound:
    return NotFound(f"request {request_id!r} cannot be resumed: {why}; send the request again")


class Resumer:
    def __init__(self, *, worker_id: str, store: Store, journal: Journal, liveness: WorkerLiveness, pool,
                 local: LocalRequests):
        self.worker_id = worker_id
        self.store = store
        self.journal = journal
        self.liveness = liveness
        self.pool = pool
        self.local = local
        self.resumed = 0
        self.buffers = BufferBudget()   # the worker's (FrontendWorker sets it): output held for slow readers
        self.taken_over = 0

    async def resume(self, request_id: str, last_seq: int, tenant: str = ""):
        """Yield the missing events of `request_id` after `last_seq`, then the live rest, ending at its
        Final (or Failed: the edge turns it into a status)."""
        check_request_id(public_request_id(request_id))
        meta = await self.journal.meta(request_id)
        if meta is None or meta.tenant != tenant:  # another tenant's id looks exactly like an unknown one
            raise NotFound(f"no resumable request with id {request_id!r} (unknown, expired, or not yours); "
                           "send the request again")
        if await self.journal.has_gap(request_id):
            raise incomplete(request_id, "its journal has a gap (Redis was unavailable while it ran)")
        self.resumed += 1
        metrics().resumes.inc()
        state = _Replay(request_id, last_seq)
        block_ms = None
        while True:
            for event in state.take_all(await self.journal.read(request_id, state.after, block_ms=block_ms)):
                yield event
            if state.ended:
                return
            if block_ms is None:
                block_ms = int(self.journal.config.poll_interval_ms)
            if await self._someone_produces(request_id):
                continue
            # Nobody writes the journal any more: read its last entries, then take over.
            read_to = state.after
            for event in state.take_all(await self.journal.read(request_id, state.after)):
                yield event
            if state.ended:
                return
            if state.after != read_to:
                continue
            events = Outbox(self.buffers)   # bounded: the takeover's owner merges deltas for a slow reader
            owner = await self._take_over(request_id, meta, state.point(), events)
            if owner is None:
                continue  # another resume took it over: follow the journal it writes
            try:
                while True:
                    event = await events.get()
                    yield event
                    if ev.is_terminal(event):
                        return
            finally:
                await owner.cancel()  # the resuming client went away: free the engine slot

    async def _someone_produces(self, request_id: str) -> bool:
        if request_id in self.local:  # running here, whatever Redis says (its record may have been lost)
            return True
        record = await self.store.get_request(request_id)
        if record is None or not record.running:
            return False
        if record.owner == self.worker_id:
            return request_id in self.local
        return await self.liveness.alive(record.owner)

    async def _take_over(self, request_id: str, meta, point: ResumePoint, outbox: Outbox) -> RequestOwner | None:
        """Claim the request (CAS on its record) and run it again here; None if another worker got it."""
        record = await self._claim(request_id, meta.tenant)
        if record is None:
            return None
        self.taken_over += 1
        metrics().takeovers.inc()
        engine_request = ipb.GenerateRequest.FromString(meta.request)
        # Its own engine-side id: the first run may still be on that replica's engine (its caller's cancel
        # has not reached it yet), and an engine refuses a second request with a running id.
        engine_request.request_id = f"{request_id}#takeover-{secrets.token_hex(4)}"
        try:
            replica = await self.pool.pick(model=meta.model)
        except BaseException:
            await self.store.finish_request(record, "failed", point.seq)
            raise
        record = replace(record, replica_id=replica.replica_id)
        owner = RequestOwner(record=record, engine_request=engine_request, pool=self.pool, replica=replica,
                             store=self.store, local=self.local, sink=outbox.put, model=meta.model, outbox=outbox,
                             journal=RequestJournal(self.journal, request_id, chars=point.chars), resume_from=point)
        owner.start()
        log.info("worker %s took over request %s after seq %d", self.worker_id, request_id, point.seq,
                 extra={"request_id": request_id, "worker_id": self.worker_id})
        return owner

    async def _claim(self, request_id: str, tenant: str) -> RequestRecord | None:
        """The request's record, now owned here; its tenant is the journal's (the record may be gone)."""
        key = self.store.request_key(request_id)
        async with self.store.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                data = await pipe.get(key)
                old = unpack_record(RequestRecord, data, where=key)
                if old is not None and old.running and (
                        old.owner == self.worker_id or await self.liveness.alive(old.owner)):
                    return None  # alive again, or claimed by another resume meanwhile
                record = RequestRecord(request_id=request_id, owner=self.worker_id, state=RUNNING,
                                       last_seq=old.last_seq if old else 0,
                                       session_id=old.session_id if old else "",
                                       replica_id=old.replica_id if old else "", created_unix_s=time.time(),
                                       tenant=tenant)
                pipe.multi()
                pipe.set(key, pack_record(record), px=self.store._request_ttl_ms)
                pipe.delete(self.store.flag_key(request_id))
                await pipe.execute()
                return record
            except Exception as exc:  # noqa: BLE001 - WatchError: someone else changed it first
                if type(exc).__name__ == "WatchError":
                    return None
                raise


class _Replay:
    """What a resume has read from the journal and what the client still needs."""

    def __init__(self, request_id: str, last_seq: int):
        self.request_id = request_id
        self.client_seq = last_seq
        self.journal_seq = 0               # seq of the last journaled delta
        self.journal_chars = 0             # completion characters journaled
        self.journal_tokens = 0            # tokens the journaled deltas cover (of those read)
        self.text: list[str] | None = []  # journaled completion text (None once trimmed entries are seen)
        self.accepted = False
        self.ended = False
        self.after = b"-"                  # stream id of the last entry read

    def take_all(self, entries) -> list[ev.Event]:
        """The events of these journal entries the client still needs, up to a terminal one."""
        out = []
        for entry in entries:
            self.after = entry.stream_id
            event = self.take(entry)
            if event is not None:
                out.append(event)
            if self.ended:
                break
        return out

    def take(self, entry) -> ev.Event | None:
        event = from_message(pb.ServerMessage.FromString(entry.message))
        if entry.terminal:
            if self.client_seq > self.journal_seq:
                raise incomplete(self.request_id, f"last_seq {self.client_seq} is past its end (seq "
                                 f"{self.journal_seq}); was it sent by this deployment?")
            self.ended = True
            return event
        if isinstance(event, ev.Accepted):
            self.accepted = True
            return event if self.client_seq == 0 else None
        if not isinstance(event, ev.Delta):
            return None
        if self.journal_seq == 0 and entry.seq > 1:
            if entry.seq > self.client_seq + 1:
                raise incomplete(self.request_id, f"deltas {self.client_seq + 1}-{entry.seq - 1} expired "
                                 "from its journal")
            self.text = None
        elif self.journal_seq and entry.seq != self.journal_seq + 1:
            raise incomplete(self.request_id, f"its journal skips from seq {self.journal_seq} to {entry.seq}")
        self.journal_seq, self.journal_chars = entry.seq, entry.chars
        self.journal_tokens += event.token_count
        if self.text is not None:
            self.text.append(event.text)
        return event if entry.seq > self.client_seq else None

    def point(self) -> ResumePoint:
        return ResumePoint(seq=self.journal_seq, chars=self.journal_chars, tokens=self.journal_tokens,
                           text="".join(self.text) if self.text is not None else None, accepted=self.accepted,
                           client_seq=self.client_seq)
