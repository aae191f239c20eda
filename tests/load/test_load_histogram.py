"""Merging histograms and partial results equals filling one with everything."""

import random

from flint.load.histogram import LogHistogram
from flint.load.record import RequestRecord
from flint.load.slo import SloConfig
from flint.load.summary import Partial, partial_of, summarize


def test_merged_histograms_equal_a_single_histogram():
    rng = random.Random(3)
    values = [rng.lognormvariate(3, 1.2) for _ in range(20_000)] + [0.0] * 10
    single = LogHistogram()
    single.record_many(values)
    parts = [LogHistogram() for _ in range(4)]
    for i, v in enumerate(values):
        parts[i % 4].record(v)
    merged = LogHistogram()
    for p in parts:
        merged.merge(p)
    assert merged.counts == single.counts and merged.count == single.count
    for q in (0.0, 0.5, 0.9, 0.99, 0.999, 1.0):
        assert merged.quantile(q) == single.quantile(q)
    assert LogHistogram.from_dict(merged.to_dict()).counts == merged.counts


def test_quantiles_are_within_the_histogram_precision():
    values = list(range(1, 10_001))
    h = LogHistogram(precision=0.01)
    h.record_many(values)
    for q in (0.5, 0.9, 0.99):
        exact = values[int(q * len(values)) - 1]
        assert abs(h.quantile(q) - exact) / exact <= 0.01


def _records(n: int, seed: int) -> list[RequestRecord]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sent = i * 10.0
        t, deltas = sent + rng.uniform(5, 300), []
        for seq in range(1, rng.randint(1, 20)):
            deltas.append([t, seq, rng.randint(0, 3)])
            t += rng.uniform(0.5, 40)
        err = rng.random() < 0.05
        out.append(RequestRecord(id=f"r{i}", job=i, step=0, label="x", generator=i % 3, t_intended_ms=sent - rng.uniform(0, 5),
                                 t_sent_ms=sent, t_end_ms=t, deltas=[] if err else deltas,
                                 error_code="UNAVAILABLE" if err else "", finish_reason="error" if err else "length",
                                 server={"queue_ms": rng.uniform(0, 9), "first_token_ms": 3.0} if not err else {}))
    return out


def test_partials_of_several_generators_merge_to_the_single_process_summary():
    records, slo = _records(3000, 1), SloConfig()
    single = partial_of(records, slo, 100)
    merged = Partial()
    for k in range(3):
        merged.merge(Partial.from_dict(partial_of([r for r in records if r.generator == k], slo, 100).to_dict()))
    args = {"slo": slo, "duration_s": 30.0, "lag_budget_ms": 20, "generators": []}
    a, b = summarize(single, **args), summarize(merged, **args)
    for name in a["metrics"]:
        for key in ("count", "p50", "p90", "p99", "p999", "min", "max"):
            assert a["metrics"][name][key] == b["metrics"][name][key], (name, key)
    for key in ("requests", "errors", "good", "judged", "errors_by_code", "tokens", "stalls", "achieved_rps"):
        assert a[key] == b[key]
    assert single.timeline == merged.timeline
