"""Engine metrics with Prometheus names, registered on a registry passed in.

Nothing is registered at import time; each `EngineMetrics` owns its
collectors, so several engines (tests) never clash. Names (all labelled
`model`):

| name | type | meaning |
| --- | --- | --- |
| flint_engine_time_to_first_token_seconds | histogram | arrival -> first token |
| flint_engine_inter_token_latency_seconds | histogram | gap between a request's deltas (per token) |
| flint_engine_queue_time_seconds | histogram | arrival -> first scheduled |
| flint_engine_prefill_tokens_total | counter | prompt tokens computed (rate() = prefill tokens/s) |
| flint_engine_decode_tokens_total | counter | tokens generated (rate() = decode tokens/s) |
| flint_engine_prefill_tokens_per_second | gauge | prefill throughput over the last ~1 s of steps |
| flint_engine_decode_tokens_per_second | gauge | decode throughput over the last ~1 s of steps |
| flint_engine_kv_cache_usage_ratio | gauge | used KV blocks / all blocks (prefix cache included) |
| flint_engine_prefix_cache_hit_tokens_total | counter | prompt tokens served from the prefix cache |
| flint_engine_prefix_cache_query_tokens_total | counter | prompt tokens looked up in the prefix cache |
| flint_engine_spec_draft_tokens_total | counter | speculative tokens proposed |
| flint_engine_spec_accepted_tokens_total | counter | speculative tokens accepted |
| flint_engine_aborts_total | counter | requests aborted (interrupt, client gone, time limit) |
| flint_engine_preemptions_total | counter | running requests preempted for KV (recomputed later) |
| flint_engine_queue_timeouts_total | counter | requests not started within the queue timeout (RESOURCE_EXHAUSTED) |
| flint_engine_requests_running / _waiting | gauge | scheduler state |
| flint_engine_step_seconds | histogram | one engine step (schedule + forward + sampling + detokenize) |
"""

from __future__ import annotations

import bisect
import time

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class EngineMetrics:
    def __init__(self, registry=None, model: str = ""):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry if registry is not None else CollectorRegistry()
        kw = dict(labelnames=("model",), registry=self.registry)

        def hist(name, doc):
            return Histogram(name, doc, buckets=_LATENCY_BUCKETS, **kw).labels(model)

        def counter(name, doc):
            return Counter(name, doc, **kw).labels(model)

        def gauge(name, doc):
            return Gauge(name, doc, **kw).labels(model)

        self.ttft = hist("flint_engine_time_to_first_token_seconds", "Arrival to first token")
        self.itl = hist("flint_engine_inter_token_latency_seconds", "Time between tokens of a request")
        self.queue = hist("flint_engine_queue_time_seconds", "Arrival to first scheduled")
        self.step = hist("flint_engine_step_seconds", "Duration of one engine step")
        self.prefill_tokens = counter("flint_engine_prefill_tokens", "Prompt tokens computed")
        self.decode_tokens = counter("flint_engine_decode_tokens", "Tokens generated")
        self.prefill_tps = gauge("flint_engine_prefill_tokens_per_second", "Recent prefill throughput")
        self.decode_tps = gauge("flint_engine_decode_tokens_per_second", "Recent decode throughput")
        self.kv_usage = gauge("flint_engine_kv_cache_usage_ratio", "Used KV blocks / all KV blocks")
        self.cache_hit = counter("flint_engine_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache")
        self.cache_query = counter("flint_engine_prefix_cache_query_tokens", "Prompt tokens looked up in the cache")
        self.spec_draft = counter("flint_engine_spec_draft_tokens", "Speculative tokens proposed")
        self.spec_accepted = counter("flint_engine_spec_accepted_tokens", "Speculative tokens accepted")
        self.aborts = counter("flint_engine_aborts", "Requests aborted")
        self.preemptions = counter("flint_engine_preemptions", "Running requests preempted for KV")
        self.queue_timeouts = counter("flint_engine_queue_timeouts", "Requests not started within the queue timeout")
        self.running = gauge("flint_engine_requests_running", "Requests in the running batch")
        self.waiting = gauge("flint_engine_requests_waiting", "Requests waiting for admission")
        self._window_start = time.perf_counter()
        self._window_prefill = 0
        self._window_decode = 0

    def record_step(self, duration_s: float, prefill_tokens: int, decode_tokens: int) -> None:
        """Per step: counters, and the throughput gauges once per ~1 s window."""
        self.step.observe(duration_s)
        if prefill_tokens:
            self.prefill_tokens.inc(prefill_tokens)
        if decode_tokens:
            self.decode_tokens.inc(decode_tokens)
        self._window_prefill += prefill_tokens
        self._window_decode += decode_tokens
        now = time.perf_counter()
        elapsed = now - self._window_start
        if elapsed >= 1.0:
            self.prefill_tps.set(self._window_prefill / elapsed)
            self.decode_tps.set(self._window_decode / elapsed)
            self._window_start, self._window_prefill, self._window_decode = now, 0, 0


def observe_all(histogram, values: list[float]) -> None:
    """`histogram.observe(v)` for every v in `values`, exporting the same buckets, sum and count, in fewer calls.

    A decode step's requests share one clock reading and usually the previous step's, so their inter-token
    gaps are one repeated value: a run of n equal values is one bucket increment of n. The sum still adds
    each value in order (float addition is not associative). Uses prometheus_client's Histogram child
    internals (`_sum`, `_buckets`, `_upper_bounds`, each value's `inc`); without them, observes each value.
    16 values: 11.5 -> 3.9 us (2-core EPYC, prometheus_client 0.26).
    """
    try:
        total, buckets, bounds = histogram._sum, histogram._buckets, histogram._upper_bounds
    except AttributeError:
        for v in values:
            histogram.observe(v)
        return
    for v in values:
        total.inc(v)
    run_value, run = values[0], 0
    for v in values:
        if v != run_value:
            buckets[bisect.bisect_left(bounds, run_value)].inc(run)
            run_value, run = v, 0
        run += 1
    buckets[bisect.bisect_left(bounds, run_value)].inc(run)
