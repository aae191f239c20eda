"""From per-request records to mergeable partial results, and from those to a run summary.

Each generator turns its records into a Partial: counters and LogHistograms
only, so partials of several processes add up to exactly the partial of all
records together (tests/load/test_load_merge.py). Percentiles are read from
the merged histograms, never averaged.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from flint.load.histogram import LogHistogram
from flint.load.record import RequestRecord
from flint.load.slo import SloConfig

METRICS = ("ttft_ms", "ttft_intended_ms", "itl_ms", "tpot_ms", "delta_gap_ms", "max_gap_ms", "e2e_ms",
           "schedule_lag_ms", "interrupt_to_stop_ms", "tokens_after_interrupt", "completion_tokens",
           "server_queue_ms", "server_prefill_ms", "server_first_token_ms", "server_decode_ms", "server_total_ms",
           "client_overhead_ms")
COUNTERS = ("requests", "sent", "ok", "errors", "interrupted", "superseded", "judged", "good", "stalls", "tokens",
            "deltas", "deltas_after_ack", "seq_errors", "prompt_tokens", "cached_prompt_tokens")


@dataclass
class Partial:
    hists: dict[str, LogHistogram] = field(default_factory=lambda: {m: LogHistogram() for m in METRICS})
    counts: Counter = field(default_factory=Counter)
    errors_by_code: Counter = field(default_factory=Counter)
    finish_reasons: Counter = field(default_factory=Counter)
    # second -> {"intended", "sent", "done", "errors", "tokens"} counts, plus "ttft" histogram by intended second.
    timeline: dict[int, Counter] = field(default_factory=dict)
    timeline_ttft: dict[int, LogHistogram] = field(default_factory=dict)
    t_first_ms: float = math.inf
    t_last_ms: float = -math.inf

    def add(self, r: RequestRecord, slo: SloConfig, stall_ms: float) -> None:
        h, c = self.hists, self.counts
        c["requests"] += 1
        sec = int(r.t_intended_ms // 1000)
        self._tick(sec, "intended")
        self.t_first_ms = min(self.t_first_ms, r.t_intended_ms)
        if r.t_end_ms is not None:
            self.t_last_ms = max(self.t_last_ms, r.t_end_ms)
            self._tick(int(r.t_end_ms // 1000), "done")
        if r.t_sent_ms is not None:
            c["sent"] += 1
            self._tick(int(r.t_sent_ms // 1000), "sent")
            h["schedule_lag_ms"].record(r.schedule_lag_ms)
        self.finish_reasons[r.finish_reason or "unfinished"] += 1
        if not r.ok:
            c["errors"] += 1
            self.errors_by_code[r.error_code] += 1
            self._tick(int((r.t_end_ms or r.t_intended_ms) // 1000), "errors")
        else:
            c["ok"] += 1
        for d in r.deltas:
            self._tick(int(d[0] // 1000), "tokens", int(d[2]))
        c["tokens"] += r.tokens
        c["deltas"] += len(r.deltas)
        c["seq_errors"] += r.seq_errors
        if r.ok and not r.interrupted:   # a Final of an interrupted request may not report its cache hits
            c["prompt_tokens"] += r.prompt_tokens or 0
            c["cached_prompt_tokens"] += r.cached_prompt_tokens or 0
        self._latencies(r, stall_ms)
        if r.interrupted:
            c["interrupted"] += 1
            _rec(h["interrupt_to_stop_ms"], r.interrupt_to_stop_ms)
            _rec(h["tokens_after_interrupt"], r.tokens_after_interrupt)
            c["deltas_after_ack"] += r.deltas_after_ack or 0
        if r.superseded:
            c["superseded"] += 1
        else:
            c["judged"] += 1
            c["good"] += int(r.ok and slo.request_ok(r.ttft_intended_ms, r.tpot_ms))

    def _latencies(self, r: RequestRecord, stall_ms: float) -> None:
        h = self.hists
        for name in ("ttft_ms", "ttft_intended_ms", "tpot_ms", "max_gap_ms", "e2e_ms"):
            _rec(h[name], getattr(r, name))
        if r.ttft_intended_ms is not None:
            sec = int(r.t_intended_ms // 1000)
            self.timeline_ttft.setdefault(sec, LogHistogram()).record(r.ttft_intended_ms)
        h["itl_ms"].record_many(r.itl_ms)
        h["delta_gap_ms"].record_many(r.delta_gaps_ms)
        self.counts["stalls"] += r.stalls(stall_ms)
        if r.ok and not r.interrupted and r.finish_reason not in ("closed",):
            _rec(h["completion_tokens"], r.completion_tokens if r.completion_tokens is not None else r.tokens)
            for key, value in r.server.items():
                h["server_" + key].record(value)
            if r.server and r.ttft_ms is not None:
                h["client_overhead_ms"].record(r.ttft_ms - r.server.get("first_token_ms", 0.0))

    def _tick(self, sec: int, key: str, n: int = 1) -> None:
        self.timeline.setdefault(sec, Counter())[key] += n

    def merge(self, other: "Partial") -> "Partial":
        for name, hist in other.hists.items():
            self.hists[name].merge(hist)
        self.counts.update(other.counts)
        self.errors_by_code.update(other.errors_by_code)
        self.finish_reasons.update(other.finish_reasons)
        for sec, counts in other.timeline.items():
            self.timeline.setdefault(sec, Counter()).update(counts)
        for sec, hist in other.timeline_ttft.items():
            self.timeline_ttft.setdefault(sec, LogHistogram()).merge(hist)
        self.t_first_ms = min(self.t_first_ms, other.t_first_ms)
        self.t_last_ms = max(self.t_last_ms, other.t_last_ms)
        return self

    def to_dict(self) -> dict:
        return {"hists": {k: v.to_dict() for k, v in self.hists.items()}, "counts": dict(self.counts),
                "errors_by_code": dict(self.errors_by_code), "finish_reasons": dict(self.finish_reasons),
                "timeline": {str(k): dict(v) for k, v in self.timeline.items()},
                "timeline_ttft": {str(k): v.to_dict() for k, v in self.timeline_ttft.items()},
                "t_first_ms": _finite(self.t_first_ms), "t_last_ms": _finite(self.t_last_ms)}

    @classmethod
    def from_dict(cls, data: dict) -> "Partial":
        p = cls()
        p.hists.update({k: LogHistogram.from_dict(v) for k, v in data["hists"].items()})
        p.counts, p.errors_by_code = Counter(data["counts"]), Counter(data["errors_by_code"])
        p.finish_reasons = Counter(data["finish_reasons"])
        p.timeline = {int(k): Counter(v) for k, v in data["timeline"].items()}
        p.timeline_ttft = {int(k): LogHistogram.from_dict(v) for k, v in data["timeline_ttft"].items()}
        p.t_first_ms = data["t_first_ms"] if data["t_first_ms"] is not None else math.inf
        p.t_last_ms = data["t_last_ms"] if data["t_last_ms"] is not None else -math.inf
        return p


def _rec(hist: LogHistogram, value) -> None:
    if value is not None:
        hist.record(value)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def partial_of(records, slo: SloConfig, stall_ms: float) -> Partial:
    partial = Partial()
    for r in records:
        partial.add(r, slo, stall_ms)
    return partial


def summarize(partial: Partial, *, slo: SloConfig, duration_s: float, lag_budget_ms: float,
              generators: list[dict]) -> dict:
    """The report's `summary`: rates, latency percentiles, goodput, SLO verdict, generator health."""
    c, h = partial.counts, partial.hists
    limits = slo.limits
    q = limits["percentile"] / 100.0
    span_s = max(1e-9, (partial.t_last_ms - max(0.0, partial.t_first_ms)) / 1000.0) if c["requests"] else 0.0
    judged = c["judged"]
    errors_judged = c["errors"]
    error_rate = errors_judged / judged if judged else 0.0
    ttft_q, tpot_q = h["ttft_intended_ms"].quantile(q), h["tpot_ms"].quantile(q)
    checks = {
        "ttft": ttft_q is not None and ttft_q <= limits["ttft_ms"],
        "tpot": tpot_q is None or tpot_q <= limits["tpot_ms"],
        "errors": error_rate <= limits["max_error_rate"],
        "some_requests": judged > 0 and ttft_q is not None,
    }
    # Behind = persistently late, not one hiccup of a shared machine: > 5% of sends (and >= 2) over budget,
    # or any send over a second late, or an event loop whose p95 tick lag exceeds the budget.
    lag = h["schedule_lag_ms"]
    late = lag.count_above(lag_budget_ms)
    behind_reasons = []
    if (late >= 2 and late > 0.05 * max(1, lag.count)) or (lag.count and lag.max > 1000.0):
        behind_reasons.append(f"{late} of {lag.count} requests sent more than {lag_budget_ms:g} ms late "
                              f"(p99 schedule lag {lag.quantile(0.99):.1f} ms, max {lag.max:.1f} ms)")
    for g in generators:
        loop_p95 = (g.get("loop_lag_ms") or {}).get("p95")
        if loop_p95 is not None and loop_p95 > lag_budget_ms:
            behind_reasons.append(f"generator {g.get('index')} event-loop lag p95 {loop_p95:.1f} ms")
        if (g.get("cpu_util") or 0) > 0.9:
            behind_reasons.append(f"generator {g.get('index')} used {g['cpu_util']:.0%} of a core")
    return {
        "requests": c["requests"], "sent": c["sent"], "ok": c["ok"], "errors": c["errors"],
        "errors_by_code": dict(partial.errors_by_code), "finish_reasons": dict(partial.finish_reasons),
        "interrupted": c["interrupted"], "superseded": c["superseded"], "tokens": c["tokens"], "deltas": c["deltas"],
        "stalls": c["stalls"], "deltas_after_ack": c["deltas_after_ack"], "seq_errors": c["seq_errors"],
        "prompt_tokens": c["prompt_tokens"], "cached_prompt_tokens": c["cached_prompt_tokens"],
        "duration_s": duration_s, "span_s": round(span_s, 3),
        "offered_rps": round(c["requests"] / duration_s, 3),
        "sent_rps": round(c["sent"] / duration_s, 3),
        "achieved_rps": round(c["ok"] / span_s, 3) if span_s else 0.0,
        "tokens_per_s": round(c["tokens"] / span_s, 1) if span_s else 0.0,
        "goodput_rps": round(c["good"] / span_s, 3) if span_s else 0.0,
        "good": c["good"], "judged": judged, "good_fraction": round(c["good"] / judged, 4) if judged else None,
        "error_rate": round(error_rate, 4),
        "slo": {**slo.describe(), "ttft_at_percentile_ms": ttft_q, "tpot_at_percentile_ms": tpot_q,
                "checks": checks, "pass": all(checks.values())},
        "fell_behind": bool(behind_reasons), "fell_behind_reasons": behind_reasons,
        "metrics": {name: hist.summary() for name, hist in h.items()},
    }
