"""Prometheus metrics of front-end workers and engine replicas, served on an HTTP port.

Names (all prefixed `flint_`), documented here and in README:
  flint_frontend_requests_total{kind,outcome}    requests ended, by kind (complete/edit) and outcome (finished,
                                                 interrupted, failed)
  flint_frontend_stage_seconds{stage}            per-stage latency at the front-end: route (pick a replica),
                                                 admit (limits, rate limit, tenant slot), register (Redis
                                                 request record + journal), first_delta (arrival -> first
                                                 delta relayed), total (arrival -> end)
  flint_redis_call_seconds{op}                   Redis round trips of the front-end (journal_flush, ...)
  flint_journal_dropped_total                    journal appends dropped (Redis slow or down)
  flint_resumes_total / flint_takeovers_total    Resume calls served / requests regenerated after their owner died
  flint_replica_generate_total{outcome}          Generate calls ended at a replica (finished / ended_early)
  flint_document_tokens_total{how}               a replica's document token cache per document request: hit,
                                                 incremental (windows re-tokenized around edits), loaded (read
                                                 from Redis, whole text tokenized), full_retokenize (an edit
                                                 whose window could not be proven stable)
  flint_replica_running / _waiting / _kv_used_fraction   engine load gauges, sampled at scrape time
  flint_ray_call_seconds{op}                     Ray calls made by flint: replica_start, replica_stop (the
                                                 token path never calls Ray)
One registry per process; each process serves its own /metrics.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("flint_frontend_requests", "Requests ended at the front-end", ["kind", "outcome"],
                                registry=r)
        self.stage = Histogram("flint_frontend_stage_seconds", "Per-stage latency at the front-end", ["stage"],
                               buckets=_LATENCY_BUCKETS_S, registry=r)
        self.redis = Histogram("flint_redis_call_seconds", "Redis round trips", ["op"], buckets=_LATENCY_BUCKETS_S,
                               registry=r)
        self.ray = Histogram("flint_ray_call_seconds", "Ray calls made by flint", ["op"], buckets=_LATENCY_BUCKETS_S,
                             registry=r)
        self.journal_dropped = Counter("flint_journal_dropped", "Journal appends dropped", registry=r)
        self.resumes = Counter("flint_resumes", "Resume calls served", registry=r)
        self.takeovers = Counter("flint_takeovers", "Requests regenerated after their owner stopped", registry=r)
        self.replica_generate = Counter("flint_replica_generate", "Generate calls ended at a replica", ["outcome"],
                                        registry=r)
        self.document_tokens = Counter("flint_document_tokens", "Document token cache outcomes at a replica",
                                       ["how"], registry=r)
        self._server = None

    def time_stage(self, stage: str):
        return _timed(self.stage, stage)

    def time_redis(self, op: str):
        return _timed(self.redis, op)

    def time_ray(self, op: str):
        return _timed(self.ray, op)

    def engine_gauges(self, load_fn) -> None:
        """Replica load gauges read from `load_fn()` (an engine LoadInfo) at each scrape."""
        for name, field in (("flint_replica_running", "running"), ("flint_replica_waiting", "waiting"),
                            ("flint_replica_kv_used_fraction", "kv_used_fraction")):
            gauge = Gauge(name, f"engine {field}", registry=self.registry)
            gauge.set_function(lambda field=field: getattr(load_fn(), field))

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP; returns the bound port (port 0 = any free one)."""
        self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def _timed(histogram: Histogram, label: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        histogram.labels(label).observe(time.perf_counter() - start)


_METRICS: Metrics | None = None


def metrics() -> Metrics:
    """The process's metrics (made on first use, never at import time)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = Metrics()
    return _METRICS
