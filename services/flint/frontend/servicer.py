"""flint.v1.Flint handlers of one front-end worker.

Everything shared lives in Redis (`Store`), the replica registry
(`ReplicaPool`) and the interrupt bus; the only process-local state is the
requests this worker owns right now (`LocalRequests`), which the bus
reaches when an interrupt arrives from another worker. `start_request` is
the live driver of a `RequestOwner`; any edge (this gRPC one, or another
protocol) passes a sink that renders the owner's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Callable

import grpc

from flint.errors import InvalidArgument
from flint.frontend import events as ev
from flint.frontend.codec import check_decoded, on_call_end
from flint.frontend.documents import SessionDocuments, names_documents
from flint.frontend.interrupts import InterruptBus
from flint.frontend.journal import RequestJournal, pin_seed
from flint.frontend.outbox import BufferBudget, Outbox
from flint.frontend.owner import LocalRequests, RequestOwner, open_engine_call, to_completion
from flint.frontend.render import to_message
from flint.frontend.replicas import ReplicaPool
from flint.frontend.session import SessionStream
from flint.frontend.store import RequestRecord, SessionRecord, Store
from flint.observability import tracing
from flint.observability.metrics import metrics
from flint.security.context import current_tenant
from flint.security.limits import check_model_name
from flint.frontend.validate import check_request_id, request_id_of, scope_request_id, to_engine_request
from flint.v1 import flint_pb2 as pb

RESUME_DISABLED = "Resume is disabled on this deployment (journal.enabled = false): send the request again"


class FlintServicer:
    def __init__(self, *, worker_id: str, store: Store, pool: ReplicaPool, bus: InterruptBus,
                 local: LocalRequests, journal=None, resumer=None, guard=None, buffers: BufferBudget | None = None):
        self.worker_id = worker_id
        self.buffers = buffers or BufferBudget()   # output held back for slow clients, over all streams
        self.guard = guard          # flint.admission.RequestGuard: limits, rate limit, saturation, tenant slots
        self._background: set[asyncio.Task] = set()
        self.journal = journal      # flint.frontend.journal.Journal, or None when resume is disabled
        self.resumer = resumer      # flint.frontend.resume.Resumer
        self.store = store
        self.pool = pool
        self.bus = bus
        self.local = local
        self.document_store = None  # flint.docstore.DocumentStore: the Session streams' documents

    # ------------------------------------------------------------ shared by all RPCs
    async def start_request(self, msg: pb.CompleteRequest | pb.EditRequest, *, request_id: str,
                            session: SessionRecord | None, sink: Callable[[ev.Event], None],
                            arrival_unix_s: float, documents: SessionDocuments | None = None,
                            outbox: Outbox | None = None) -> tuple[RequestOwner, SessionRecord | None]:
        """Validate, route, register in Redis and start the request's owner; returns it and the updated
        session. The owner delivers the request's events to `sink`, which feeds `outbox` (flint.frontend.outbox)
        when the edge has one: the owner then holds text back while the client reads slowly."""
        model = check_model_name(msg.model) or (session.model if session else "")
        tenant = current_tenant()
        stats = metrics()
        with stats.time_stage("route"):
            replica = await self.pool.pick(model=model, affinity=session.replica_id if session else "")
        engine_request = to_engine_request(msg, request_id=request_id, max_context_tokens=replica.max_context_tokens,
                                           arrival_unix_s=arrival_unix_s)
        engine_request.cache_namespace = tenant  # one tenant's prefix cache never serves another's prompts
        if documents is not None:
            await documents.fill(msg, engine_request)
        elif names_documents(msg):
            raise InvalidArgument("documents live in Session streams: open the document there (open_document) "
                                  "or send prefix and suffix")
        with stats.time_stage("admit"):
            release = await self.guard.admit(msg, request_id=request_id, tenant=tenant, replica=replica,
                                             engine_request=engine_request) if self.guard is not None else None
        with stats.time_stage("register"):
            owner, session = self._start_owner(msg, request_id, tenant, replica, engine_request, session, sink,
                                               release, outbox)
            try:
                await owner.claimed()
            except asyncio.CancelledError:  # the client went away meanwhile: free the engine, leave nothing running
                await to_completion(owner.cancel())
                raise
        return owner, session

    def _start_owner(self, msg, request_id, tenant, replica, engine_request, session, sink, release, outbox):
        """Open the engine call, then start the request's owner, which claims the request id, starts its journal
        and moves its session's affinity (one Redis round trip, see `RequestOwner.claimed`) while the engine has
        the request. From here the owner releases `release` when it ends, also if the claim fails."""
        opened = None
        try:
            if self.journal is not None:
                pin_seed(engine_request)   # before the engine has it: a takeover runs it again with the same seed
            span = tracing.start_request_span(request_id, "edit" if isinstance(msg, pb.EditRequest) else "complete",
                                              replica.replica_id)
            # The engine call first: what the worker does before it is on every request's way to its first token;
            # the record, the journal's start and the owner are built while the request travels.
            metadata = tracing.outgoing_metadata(span)
            opened = open_engine_call(self.pool, replica, engine_request, metadata)
            sink = metrics().request(replica.model, engine_request.arrival_unix_s).observing(sink)  # vLLM-style
            record = RequestRecord(request_id=request_id, owner=self.worker_id, tenant=tenant,
                                   session_id=session.session_id if session else "", replica_id=replica.replica_id,
                                   created_unix_s=time.time())
            deletes, writes, request_journal = [], [], None
            if self.journal is not None:
                deletes, writes = self.journal.begin_writes(request_id, engine_request.SerializeToString(),
                                                            tenant=tenant, model=replica.model)
                request_journal = RequestJournal(self.journal, request_id, begun=True)
            if session is not None and session.replica_id != replica.replica_id:
                session = replace(session, replica_id=replica.replica_id)
                writes.append(self.store.session_write(session))
            owner = RequestOwner(record=record, engine_request=engine_request, pool=self.pool, replica=replica,
                                 store=self.store, local=self.local, sink=sink, journal=request_journal,
                                 on_done=self._on_done(release, span), metadata=metadata, outbox=outbox, opened=opened,
                                 claim=self.store.claim_request(record, deletes=deletes, writes=writes))
        except BaseException:
            if opened is not None:   # the engine frees the request at its next step
                opened[1].cancel()
            if release is not None:
                asyncio.ensure_future(release())
            raise
        owner.start()
        return owner, session

    def _on_done(self, release, span):
        def done(owner: RequestOwner) -> None:
            span.set_attribute("flint.outcome", owner.record.state)
            span.end()
            stats = metrics()
            request = owner.engine_request
            kind = "edit" if request.kind == request.EDIT else "complete"
            stats.requests.labels(kind, owner.record.state).inc()
            stats.stage.labels("total").observe(max(0.0, time.time() - request.arrival_unix_s))
            if release is not None:  # free the tenant's concurrency slot
                task = asyncio.ensure_future(release())
                self._background.add(task)
                task.add_done_callback(self._background.discard)

        return done

    async def interrupt(self, request_id: str):
        """Interrupt the calling tenant's `request_id` wherever it runs (another tenant's ids look unknown)."""
        tenant = current_tenant()
        return await self.bus.interrupt(scope_request_id(check_request_id(request_id), tenant), tenant=tenant)

    async def opened(self, session: SessionRecord) -> pb.Opened:
        default = await self.pool.default_model()
        return pb.Opened(session_id=session.session_id, model=session.model or (default.model if default else ""),
                         max_context_tokens=default.max_context_tokens if default else 0,
                         worker_id=self.worker_id)

    # ------------------------------------------------------------ RPCs
    def hold(self, kind: str):
        """One of the calling tenant's `kind` slots on this worker, for the call's lifetime."""
        return self.guard.caps.hold(kind, current_tenant()) if self.guard is not None else contextlib.nullcontext()

    async def check_rate(self) -> None:
        if self.guard is not None:
            await self.guard.check_rate(current_tenant())

    async def Session(self, request_iterator, context):
        with self.hold("stream"):
            stream = SessionStream(self, context)
            async for message in stream.run(request_iterator):
                yield message

    async def Interrupt(self, request, context):
        request = check_decoded(request)
        if not request.request_id:
            raise InvalidArgument("request_id is empty: pass the id from the Accepted message")
        await self.check_rate()
        result = await self.interrupt(request.request_id)
        return pb.InterruptResponse(request_id=request.request_id, was_running=result.was_running,
                                    last_seq=result.last_seq)

    async def Resume(self, request, context):
        request = check_decoded(request)
        if self.resumer is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, RESUME_DISABLED)
        tenant = current_tenant()
        request_id = scope_request_id(check_request_id(request.request_id), tenant)
        await self.check_rate()
        with self.hold("stream"), self.hold("resume"):
            async for event in self.resumer.resume(request_id, request.last_seq, tenant):
                if isinstance(event, ev.Failed):
                    raise event.error
                yield to_message(event)

    async def _single(self, request, context):
        """One request per call (Complete, Edit): accepted, deltas, final; an error ends the call with its status.
        One generator between gRPC and the owner's outbox (each layer costs every message a resumption)."""
        with self.hold("stream"):
            arrival = time.time()
            request = check_decoded(request)
            out = Outbox(self.buffers)
            handler, owners = asyncio.current_task(), []

            def stop() -> None:  # the call ended: the client cancelled (or it is over anyway)
                handler.cancel()
                for owner in owners:
                    owner.cancel_soon()

            on_call_end(context, stop)
            owner, _ = await self.start_request(request, request_id=request_id_of(request, current_tenant()),
                                                session=None, sink=out.put, arrival_unix_s=arrival, outbox=out)
            owners.append(owner)
            if context.done():
                stop()
            owner.add_done_callback(lambda: out.put(None))  # ended without a Final: cancelled
            try:
                while True:
                    event = await out.get()
                    if event is None:
                        return
                    if isinstance(event, ev.Failed):
                        raise event.error
                    yield to_message(event)
                    if isinstance(event, ev.Final):
                        return
            finally:
                await owner.cancel()  # the client went away mid-stream: free the engine slot now

    Complete = Edit = _single
