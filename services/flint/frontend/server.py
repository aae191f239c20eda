"""Builds and runs one front-end worker: the public gRPC server and its Redis-backed parts.

`FrontendWorker(config)` binds `config.host:config.port` (port 0 in tests)
on `start()` and drains on `stop()`. Several workers may share one port
with SO_REUSEPORT (`reuse_port`): the kernel spreads incoming connections
across the processes, clients need one address, and any worker can serve
any request because the state they share is in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from flint.config import FrontendConfig
from flint.frontend.codec import SERVICE, flint_handler
from flint.frontend import reflection
from flint.frontend.interrupts import InterruptBus
from flint.frontend.liveness import LivenessConfig, server_options
from flint.frontend.outbox import BufferBudget, BufferLimits
from flint.frontend.owner import LocalRequests
from flint.frontend.replicas import ReplicaPool
from flint.frontend.routing import make_policy
from flint.frontend.servicer import FlintServicer
from flint.frontend.store import Store
from flint.observability.setup import start_metrics
from flint.replica.registry import ReplicaRegistry

log = logging.getLogger(__name__)


class FrontendWorker:
    def __init__(self, config: FrontendConfig):
        self.config = config
        self.worker_id = config.worker_id or f"worker-{secrets.token_hex(4)}"
        self.port = 0
        self._redis = None
        self._claims = None             # flint.respconn connections of the two hot writers: request claims,
        self._journal_writes = None     # and the journal's batches (everything else goes through redis-py)
        self._bus: InterruptBus | None = None
        self._pool: ReplicaPool | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        from flint.security.config import SecurityConfig

        self._security = SecurityConfig.from_dict(config.security)
        self._liveness_config = LivenessConfig.from_dict(config.liveness)
        self.metrics_port = -1
        self.http_port = -1
        self._http = None               # flint.frontend.http_door.HttpDoor when http_port >= 0
        self.readiness = None           # flint.observability.health.Readiness: Redis and a routable replica
        self._liveness = None
        self._liveness_redis = None
        self.journal = None
        self.resumer = None
        self.servicer: FlintServicer | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> int:
        """Connect to Redis (clear error naming the URL if unreachable), bind and serve; returns the port."""
        import redis.asyncio as aioredis

        from flint.docstore import DocumentLimits, DocumentStore
        from flint.valkey import check_redis_async

        from flint.security.internal import require_token
        from flint.security.redact import install_log_redaction

        from flint.security.transport import check_plaintext_keys

        install_log_redaction()  # no log line of this process carries the Redis password
        cfg = self.config
        check_plaintext_keys(cfg.host, self._security)
        internal_token = require_token(token=cfg.internal_token, token_file=cfg.internal_token_file)
        self._redis = aioredis.Redis.from_url(cfg.redis_url)
        try:
            await check_redis_async(self._redis, cfg.redis_url)
            self._claims = await _connected(cfg.redis_url)
            store = Store(self._redis, cfg.key_prefix, session_ttl_s=cfg.session_ttl_s,
                          request_ttl_s=cfg.request_ttl_s, claims=self._claims)
            local = LocalRequests()
            self._bus = InterruptBus(cfg.redis_url, store, self.worker_id, local,
                                     poll_interval_s=cfg.flag_poll_interval_ms / 1000.0,
                                     ack_timeout_s=cfg.interrupt_timeout_s)
            await self._bus.start()
            self._pool = ReplicaPool(ReplicaRegistry(self._redis, cfg.key_prefix), make_policy(cfg.routing),
                                     wait_s=cfg.replica_wait_s, internal_token=internal_token,
                                     liveness=self._liveness_config, engine_transport=cfg.engine_transport)
            journal, resumer = await self._start_journal(store, local)
            servicer = FlintServicer(worker_id=self.worker_id, store=store, pool=self._pool, bus=self._bus,
                                     local=local, journal=journal, resumer=resumer, guard=self._guard(),
                                     buffers=BufferBudget(BufferLimits.from_dict(cfg.buffers)))
            if resumer is not None:
                resumer.buffers = servicer.buffers
            servicer.document_store = DocumentStore(self._redis, cfg.key_prefix, ttl_s=cfg.session_ttl_s,
                                                    limits=DocumentLimits.from_dict(cfg.documents))
            self.servicer = servicer
            self._server = self._build_server(servicer)
            from flint.security.transport import bind

            self.port = bind(self._server, f"{cfg.host}:{cfg.port}", self._security)  # TLS when configured
            await self._server.start()
            self.metrics_port = start_metrics(self.config.observability)
            from flint.observability.health import Readiness

            self.readiness = Readiness(self._redis, self._pool, self._set_health)
            await self.readiness.start()
            if cfg.http_port >= 0:
                self.http_port = await self._start_http(servicer)
        except BaseException:
            await self.stop(0)
            raise
        log.info("front-end worker %s listening on %s", self.worker_id, self.address)
        return self.port

    async def _set_health(self, serving: bool, reason: str) -> None:
        """gRPC health follows readiness: NOT_SERVING while Redis or every replica is unreachable."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE):
            await self._health.set(service, status)

    async def _start_http(self, servicer: FlintServicer) -> int:
        from flint.frontend.http_door import HttpDoor

        from flint.security.transport import key_store

        keys = key_store(self._security, redis=self._redis, key_prefix=self.config.key_prefix)  # gRPC's keys
        self._http = HttpDoor(servicer=servicer, pool=self._pool, readiness=self.readiness, keys=keys,
                              host=self.config.host, port=self.config.http_port, reuse_port=self.config.reuse_port,
                              write_timeout_s=self._security.http_write_timeout_s)
        return await self._http.start()

    def _guard(self):
        """Limits, rate limits, replica saturation and tenant slots checked before a request runs."""
        from flint.admission import AdmissionConfig, RequestGuard

        return RequestGuard(admission=AdmissionConfig.from_dict(self.config.admission),
                            security=self._security, redis=self._redis,
                            key_prefix=self.config.key_prefix, session_ttl_s=self.config.session_ttl_s)

    async def _start_journal(self, store: Store, local: LocalRequests):
        """The resume journal and this worker's liveness key (None, None when disabled)."""
        from flint.frontend.heartbeat import WorkerLiveness
        from flint.frontend.journal import Journal, JournalConfig
        from flint.frontend.resume import Resumer

        config = JournalConfig.from_dict(self.config.journal)
        if not config.enabled:
            return None, None
        import redis.asyncio as aioredis

        # Its own connection: a flood of blocking journal reads on the shared pool must never delay the
        # heartbeat, or other workers would take this one for dead and take its requests over.
        self._liveness_redis = aioredis.Redis.from_url(self.config.redis_url, max_connections=4)
        self._liveness = WorkerLiveness(self._liveness_redis, self.config.key_prefix, self.worker_id,
                                        config.worker_ttl_s)
        await self._liveness.start()
        self._journal_writes = await _connected(self.config.redis_url)
        self.journal = Journal(self._redis, self.config.key_prefix, config, batches=self._journal_writes)
        self.resumer = Resumer(worker_id=self.worker_id, store=store, journal=self.journal,
                               liveness=self._liveness, pool=self._pool, local=local)
        return self.journal, self.resumer

    def _build_server(self, servicer: FlintServicer) -> grpc.aio.Server:
        from flint.security import transport

        cfg = self.config
        server = grpc.aio.server(interceptors=transport.interceptors(
            self._security, redis=self._redis, key_prefix=cfg.key_prefix) or None, options=[
            ("grpc.so_reuseport", 1 if cfg.reuse_port else 0),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            *server_options(self._liveness_config),   # keepalive, idle and age limits
            *transport.server_options(self._security),
        ])
        server.add_generic_rpc_handlers((flint_handler(servicer, transport.call_cap(self._security)),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable(server, (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name))
        return server

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, give running streams `grace_s` to finish, then release Redis. Bounded: a part that does
        not finish within STOP_PART_S (beyond the grace) is logged by name and left behind, so a stuck
        component cannot keep the worker from stopping."""
        grace_s = self.config.grace_period_s if grace_s is None else grace_s
        if self.readiness is not None:
            await _bounded(self.readiness.stop(), "the readiness endpoint")
            self.readiness = None
        http_drain = asyncio.ensure_future(self._http.stop(grace_s)) if self._http is not None else None
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await _bounded(self._server.stop(grace_s), "the gRPC server", grace_s)   # both doors drain at once
            self._server = None
        if http_drain is not None:
            await _bounded(http_drain, "the HTTP door", grace_s)
            self._http = None
        if self.journal is not None:
            await _bounded(self.journal.close(), "the journal")
        if self._liveness is not None:
            await _bounded(self._liveness.stop(), "the liveness heartbeat")
            self._liveness = None
        if self._liveness_redis is not None:
            await _bounded(self._liveness_redis.aclose(), "the liveness Redis connection")
            self._liveness_redis = None
        if self._bus is not None:
            await _bounded(self._bus.stop(), "the interrupt listener")
            self._bus = None
        if self._pool is not None:
            await _bounded(self._pool.close(), "the replica channels")
            self._pool = None
        for name, what in (("_claims", "the claims' Redis connection"),
                           ("_journal_writes", "the journal's Redis connection")):
            if getattr(self, name) is not None:
                await _bounded(getattr(self, name).close(), what)
                setattr(self, name, None)
        if self._redis is not None:
            await _bounded(self._redis.aclose(), "the Redis connection")
            self._redis = None


async def _connected(redis_url: str):
    """A flint.respconn connection to `redis_url`, open (so the first request does not pay for the connect)."""
    from flint.respconn import RespConnection

    connection = RespConnection.from_url(redis_url)
    try:
        await connection.call(b"PING")
    except BaseException:
        await connection.close()
        raise
    return connection


STOP_PART_S = 5.0   # how long past its grace one part of a worker's stop may take before it is left behind


async def _bounded(awaitable, what: str, grace_s: float = 0.0) -> None:
    """Await one part of `FrontendWorker.stop`, at most grace_s + STOP_PART_S; past that, cancel it without
    waiting for it (a part that ignores the cancel must not hang the stop either) and log it by name."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait({task}, timeout=grace_s + STOP_PART_S)
    if task in done:
        task.result()   # its error, if any, as when it was awaited directly
        return
    task.cancel()
    log.warning("front-end stop: %s did not finish within %.1f s; stopping without it", what, grace_s + STOP_PART_S)
