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
Request metrics with vLLM's names and labels (`vllm:` becomes `flint_`, so a vLLM dashboard ports by a
prefix change), observed by the front-end from the events every request ends with, labelled `model_name`:
  flint_e2e_request_latency_seconds              front-end arrival -> Final
  flint_time_to_first_token_seconds              front-end arrival -> first delta carrying a token
  flint_inter_token_latency_seconds              gap between token-bearing deltas, one sample per token
  flint_request_success_total{finished_reason}   requests that ended with a Final: stop, length, abort
                                                 (interrupted by the client), time_limit
  flint_request_failure_total{code}              requests that ended with an error, by gRPC status name
  flint_prompt_tokens_total / flint_generation_tokens_total
Replicas add flint_num_requests_running / _waiting and flint_kv_cache_usage_perc (their load gauges).
No `_created` series (disabled at registry creation).

Several front-end workers of one `flint serve` share one port; their metrics are collected across the
processes (prometheus_client multiprocess mode, PROMETHEUS_MULTIPROC_DIR set by `flint serve` for its
workers), so whichever worker answers a scrape reports all of them: one scrape target, one config.
Otherwise each process serves its own registry.
"""

from __future__ import annotations

import logging
import time

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from flint import env

log = logging.getLogger(__name__)

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# vLLM's buckets for the same three figures, so percentiles read the same way
_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)
_ITL_BUCKETS_S = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_E2E_BUCKETS_S = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0)
_FINISHED = {1: "stop", 2: "length", 3: "stop", 4: "abort", 5: "time_limit"}   # engine FinishReason -> vLLM's


class Metrics:
    def __init__(self):
        prometheus_client.disable_created_metrics()    # no `*_created` series next to counters and histograms
        self.registry = CollectorRegistry()
        self._children: dict = {}   # (histogram, label) -> its labelled child (`_child`)
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
        self.e2e = Histogram("flint_e2e_request_latency_seconds", "Front-end arrival to the request's Final",
                             ["model_name"], buckets=_E2E_BUCKETS_S, registry=r)
        self.ttft = Histogram("flint_time_to_first_token_seconds", "Front-end arrival to the first token",
                              ["model_name"], buckets=_TTFT_BUCKETS_S, registry=r)
        self.itl = Histogram("flint_inter_token_latency_seconds", "Time between tokens (one sample per token)",
                             ["model_name"], buckets=_ITL_BUCKETS_S, registry=r)
        self.request_success = Counter("flint_request_success", "Requests that ended with a Final",
                                       ["model_name", "finished_reason"], registry=r)
        self.request_failure = Counter("flint_request_failure", "Requests that ended with an error",
                                       ["model_name", "code"], registry=r)
        self.prompt_tokens = Counter("flint_prompt_tokens", "Prompt tokens of finished requests", ["model_name"],
                                     registry=r)
        self.generation_tokens = Counter("flint_generation_tokens", "Generated tokens of finished requests",
                                         ["model_name"], registry=r)
        self._server = None

    def request(self, model_name: str, arrival_unix_s: float | None = None) -> "RequestObserver":
        """An observer for one request (arrived at `arrival_unix_s`, default now); feed it the request's
        front-end events."""
        return RequestObserver(self, model_name or "default", arrival_unix_s)

    def exposition(self) -> bytes:
        """The text a scrape returns: every worker's metrics in multiprocess mode, else this registry's."""
        from prometheus_client import generate_latest

        if env.prometheus_multiproc_dir():
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged)
            return generate_latest(merged)
        return generate_latest(self.registry)

    def time_stage(self, stage: str) -> "_Timed":
        return _Timed(self._child(self.stage, stage))

    def time_redis(self, op: str) -> "_Timed":
        return _Timed(self._child(self.redis, op))

    def time_ray(self, op: str) -> "_Timed":
        return _Timed(self._child(self.ray, op))

    def _child(self, histogram: Histogram, label: str):
        """`histogram.labels(label)`, looked up once (the stage timers run before every engine call)."""
        key = (histogram, label)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = histogram.labels(label)
        return child

    def engine_gauges(self, load_fn) -> None:
        """Replica load gauges read from `load_fn()` (an engine LoadInfo) at each scrape."""
        for name, field in (("flint_replica_running", "running"), ("flint_replica_waiting", "waiting"),
                            ("flint_replica_kv_used_fraction", "kv_used_fraction"),
                            ("flint_num_requests_running", "running"), ("flint_num_requests_waiting", "waiting"),
                            ("flint_kv_cache_usage_perc", "kv_used_fraction")):   # vLLM's names too
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


class RequestObserver:
    """Turns one request's front-end events (flint.frontend.events) into the request metrics above.

    Times are taken when the events reach the edge, i.e. what a client of this worker sees.
    """

    def __init__(self, stats: Metrics, model_name: str, arrival_unix_s: float | None = None):
        self._stats, self._model = stats, model_name
        self._itl = stats.itl.labels(model_name)   # per token: looked up once, not per delta
        since_arrival_s = max(0.0, time.time() - arrival_unix_s) if arrival_unix_s is not None else 0.0
        self._t0 = self._last = time.monotonic() - since_arrival_s
        self._first = True

    def observing(self, sink):
        """`sink` that also passes each event through this observer (after the sink: the client first)."""
        def observed(event) -> None:
            sink(event)
            try:
                self.on_event(event)
            except Exception:   # noqa: BLE001 - a metrics bug must never break a request
                log.debug("request metrics failed", exc_info=True)

        return observed

    def on_event(self, event) -> None:
        kind = type(event).__name__
        now = time.monotonic()
        s, m = self._stats, self._model
        if kind == "Delta" and event.token_count > 0:
            if self._first:
                s.ttft.labels(m).observe(now - self._t0)
                self._first = False
            else:
                gap = (now - self._last) / event.token_count
                for _ in range(event.token_count):
                    self._itl.observe(gap)
            self._last = now
        elif kind == "Final":
            s.e2e.labels(m).observe(now - self._t0)
            s.request_success.labels(m, _FINISHED.get(int(event.finish_reason), "stop")).inc()
            s.prompt_tokens.labels(m).inc(event.prompt_tokens)
            s.generation_tokens.labels(m).inc(event.completion_tokens)
        elif kind == "Failed":
            from flint.grpc_status import status_code

            s.request_failure.labels(m, status_code(event.error).name).inc()


class _Timed:
    """Observes the time a `with` block took (also when it raises) in one histogram child. A class, not a
    @contextmanager: that costs a generator and its wrapper per use."""

    __slots__ = ("_child", "_start")

    def __init__(self, child):
        self._child = child

    def __enter__(self) -> "_Timed":
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> bool:
        self._child.observe(time.perf_counter() - self._start)
        return False


_METRICS: Metrics | None = None


def metrics() -> Metrics:
    """The process's metrics (made on first use, never at import time)."""
    global _METRICS
    if _METRICS is None:
        _METRICS = Metrics()
    return _METRICS
