"""An engine replica's internal gRPC server and its heartbeat into the Redis registry.

`ReplicaServer` wraps a started `AsyncEngine`: it serves
flint.internal.v1.Engine (Generate, Load) on its own `grpc.aio`
server and `Generate` also on the engine link (flint.link, a plain framed
connection per front-end worker, the workers' default hop), so tokens stream
straight to front-end workers with no Ray call per token, and publishes both
addresses, its health and load to Redis every heartbeat.
Built from an address (port 0 in tests); `stop()` drains gracefully.

Health means "can serve": every heartbeat first asks the engine
(`AsyncEngine.health()`: step thread alive and error-free, runner check).
When it cannot serve, the replica sets its gRPC health to NOT_SERVING,
publishes itself unhealthy once and stops heartbeating (front-ends stop
routing to it at their next registry read; the record then expires), and
calls `on_broken(reason)`: a replica hosted by Ray exits there so Ray
restarts it (flint.replica.host).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flint.admission import AdmissionConfig, check_replica_load, engine_below_share
from flint.config import ReplicaConfig
from flint.docstore import DocumentStore
from flint.engine.types import Final
from flint.errors import Unavailable
from flint.frontend.liveness import engine_server_options
from flint.grpc_status import ErrorInterceptor
from flint.internal.v1 import engine_pb2 as pb
from flint.observability import tracing
from flint.observability.metrics import metrics
from flint.observability.setup import start_metrics
from flint.internal.v1 import engine_pb2_grpc
from flint.link.server import LinkServer
from flint.replica.convert import batch_to_protos, request_from_proto
from flint.replica.documents import DocumentTokens
from flint.replica.prepare_pool import FairPreparePool
from flint.replica.registry import ReplicaInfo, ReplicaRegistry
from flint.security import internal
from flint.security.limits import max_token_bytes
from flint.security.redact import install_log_redaction

log = logging.getLogger(__name__)

ENGINE_SERVICE = "flint.internal.v1.Engine"


class EngineServicer(engine_pb2_grpc.EngineServicer):
    def __init__(self, engine, replica_id: str, draining: asyncio.Event, admission: AdmissionConfig):
        self._engine = engine
        self._admission = admission
        self._replica_id = replica_id
        self._draining = draining
        # Generate calls cancelled by their caller (interrupt, client gone): each closed its
        # engine iterator early, so the engine aborted it. Published in Redis for operators.
        self.cancelled_total = 0
        self.document_store = None   # flint.docstore.DocumentStore, set when Redis is connected
        self.broken = ""             # why the engine cannot serve ("" = it can); set by ReplicaServer
        self._documents = None       # flint.replica.documents.DocumentTokens, made on first use

    async def Generate(self, request, context):
        if self.broken:
            raise Unavailable(f"engine replica {self._replica_id} cannot serve ({self.broken}); it is restarting: "
                              "send the request to another replica")
        check_replica_load(self._admission, self._replica_id, self._engine.load(),   # RESOURCE_EXHAUSTED, no hang
                           below_fair_share=engine_below_share(self._engine, request.cache_namespace))
        engine_request = request_from_proto(request)
        if request.HasField("document") or request.context_documents:   # prompt from session documents
            if self._documents is None:
                self._documents = DocumentTokens(self._engine.engine.tokenizer, self.document_store)
            engine_request = await self._documents.resolve(
                engine_request, request.document if request.HasField("document") else None,
                request.context_documents)
        span = tracing.start_engine_span(request.request_id, context.invocation_metadata())
        finished = False
        try:
            # Leaving this block for any reason (client cancelled, error) closes the
            # engine's iterator, which aborts the request and frees its KV slots.
            async with contextlib.aclosing(_batches(self._engine, engine_request)) as batches:
                async for batch in batches:
                    finished = isinstance(batch[-1], Final)
                    for message in batch_to_protos(batch):
                        yield message
        except (asyncio.CancelledError, GeneratorExit):
            if not finished:  # a caller closing the call right after the Final cancelled nothing
                self.cancelled_total += 1
            raise
        finally:
            metrics().replica_generate.labels("finished" if finished else "ended_early").inc()
            span.set_attribute("flint.finished", finished)
            span.end()

    async def Load(self, request, context):
        load = self._engine.load()
        return pb.LoadReport(replica_id=self._replica_id, model=self._engine.model_name, running=load.running,
                             waiting=load.waiting, kv_used_fraction=load.kv_used_fraction,
                             max_context_tokens=load.max_context_tokens, healthy=not self.broken,
                             draining=self._draining.is_set())


async def _batches(engine, request):
    """The engine's events in the lists it queued them in (`generate_batches`); one per list for an engine that
    only has `generate`."""
    if hasattr(engine, "generate_batches"):
        async with contextlib.aclosing(engine.generate_batches(request)) as batches:
            async for batch in batches:
                yield batch
    else:
        async with contextlib.aclosing(engine.generate(request)) as events:
            async for event in events:
                yield [event]


class ReplicaServer:
    """Internal gRPC server + registry heartbeat for one started engine."""

    def __init__(self, engine, config: ReplicaConfig, *, on_broken: Callable[[str], Awaitable[None]] | None = None):
        self.config = config
        self.replica_id = config.replica_id or f"replica-{secrets.token_hex(4)}"
        self.address = ""
        self.link_address = ""       # host:port of the engine link (flint.link), beside the gRPC server
        self._engine = engine
        self._draining = asyncio.Event()
        self._servicer = EngineServicer(engine, self.replica_id, self._draining,
                                        AdmissionConfig.from_dict(config.admission))
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._link: LinkServer | None = None
        self._redis = None
        self._registry: ReplicaRegistry | None = None
        self._heartbeat: asyncio.Task | None = None
        self._on_broken = on_broken
        self._broken_task: asyncio.Task | None = None
        self._max_token_bytes = max_token_bytes(getattr(getattr(engine, "engine", None), "tokenizer", None))
        # Tokenization on a bounded pool, round-robin between tenants (stand-in engines have no hook).
        self._prepare = FairPreparePool(workers=config.prepare_workers)
        if hasattr(engine, "prepare_runner"):
            engine.prepare_runner = self._prepare.run

    async def start(self) -> str:
        """Bind, serve, check Redis and publish the first heartbeat; returns host:port."""
        import redis.asyncio as aioredis

        from flint.valkey import check_redis_async

        install_log_redaction()  # no log line of this process carries the Redis password
        token = internal.require_token(token=self.config.internal_token, token_file=self.config.internal_token_file)

        self._redis = aioredis.Redis.from_url(self.config.redis_url)
        await check_redis_async(self._redis, self.config.redis_url)
        self._registry = ReplicaRegistry(self._redis, self.config.key_prefix)
        self._servicer.document_store = DocumentStore(self._redis, self.config.key_prefix, ttl_s=0)  # reads only

        server = grpc.aio.server(interceptors=[internal.InternalAuthInterceptor(token), ErrorInterceptor()],
                                 options=[("grpc.so_reuseport", 0), *engine_server_options()])
        engine_pb2_grpc.add_EngineServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host = self.config.bind_host()  # a private interface (config refuses wildcards)
        port = server.add_insecure_port(f"{host}:{self.config.port}")
        await server.start()
        self._server = server
        self.address = f"{self.config.advertise_host or host}:{port}"
        # The engine link: the same servicer on a plain framed connection per worker (flint.link), on the same
        # private interface, checking the same token.
        self._link = LinkServer(self._servicer, token)
        link_port = await self._link.start(host, self.config.link_port)
        self.link_address = f"{self.config.advertise_host or host}:{link_port}"
        self.metrics_port = start_metrics(self.config.observability, engine_load=self._engine.load,
                                          replica_id=lambda: self.replica_id)
        await self._health.set(ENGINE_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        await self._publish()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name=f"heartbeat {self.replica_id}")
        log.info("engine replica %s serving %s at %s", self.replica_id, self._engine.model_name, self.address)
        return self.address

    def info(self) -> ReplicaInfo:
        load = self._engine.load()
        return ReplicaInfo(
            replica_id=self.replica_id, address=self.address, link_address=self.link_address,
            model=self._engine.model_name,
            max_context_tokens=load.max_context_tokens or self._engine.max_context_tokens,
            running=load.running, waiting=load.waiting, kv_used_fraction=load.kv_used_fraction,
            healthy=not self.broken, draining=self._draining.is_set(), cancelled_total=self._servicer.cancelled_total,
            max_token_bytes=self._max_token_bytes,
        )

    async def _publish(self) -> None:
        await self._registry.publish(self.info(), ttl_s=self.config.heartbeat_ttl_s)

    @property
    def broken(self) -> str:
        """Why this replica cannot serve ("" while it can)."""
        return self._servicer.broken

    def engine_problem(self) -> str:
        """The engine's own health ("" = can serve); stand-in engines without `health()` are healthy."""
        health = getattr(self._engine, "health", None)
        return health() if health is not None else ""

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval_s)
            problem = self.engine_problem()
            if problem:   # in a task of its own: `on_broken` may stop this server, which cancels this loop
                self._broken_task = asyncio.create_task(self._mark_broken(problem), name=f"broken {self.replica_id}")
                return
            try:
                await self._publish()
            except Exception as exc:  # noqa: BLE001 - Redis blips must not kill the replica
                log.warning("replica %s heartbeat failed: %s", self.replica_id, exc)

    async def _mark_broken(self, problem: str) -> None:
        """NOT_SERVING, published unhealthy once (no heartbeat refreshes it: it expires), then `on_broken`."""
        self._servicer.broken = problem
        log.error("engine replica %s cannot serve: %s; health NOT_SERVING, leaving routing", self.replica_id, problem)
        for service in ("", ENGINE_SERVICE):
            await self._health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            await self._publish()
        except Exception as exc:  # noqa: BLE001 - the record expires with its TTL anyway
            log.warning("replica %s could not publish itself unhealthy: %s", self.replica_id, exc)
        if self._on_broken is not None:
            await self._on_broken(problem)

    async def stop(self, grace_s: float | None = None) -> None:
        """Leave the registry, stop accepting, let running streams finish within the grace period."""
        grace_s = self.config.grace_period_s if grace_s is None else grace_s
        self._draining.set()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        if self._registry is not None:
            with contextlib.suppress(Exception):
                await self._registry.remove(self.replica_id)
            # Front-ends route from a registry view up to a refresh interval old: requests routed here just
            # before the removal still arrive. Serve them rather than refuse the connection (the scale-down
            # test saw UNAVAILABLE "connection refused" without this). Bounded by the grace period.
            await asyncio.sleep(min(self.config.deregister_delay_s, grace_s))
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await asyncio.gather(self._server.stop(grace_s), self._link.stop(grace_s))
            self._server = self._link = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        self._prepare.close()
