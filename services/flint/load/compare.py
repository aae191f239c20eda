"""`flint load compare A B`: what changed between two runs, with bootstrap confidence intervals.

For each figure (TTFT p50/p99 from intended time, TPOT p50/p99, end-to-end
p50, good fraction, error rate) the per-request records of A and B are
resampled with replacement `resamples` times; the interval of B - A is the
central `confidence` share of the resampled differences. A change whose
interval excludes 0 is reported as significant.
"""

from __future__ import annotations

import numpy as np

from flint.load.record import RequestRecord
from flint.load.slo import SloConfig


def _figures(slo: SloConfig):
    def pct(attr: str, q: float):
        def f(records):
            vals = np.array([v for v in (getattr(r, attr) for r in records) if v is not None], dtype=float)
            return float(np.percentile(vals, q)) if vals.size else float("nan")
        return f

    def good(records):
        judged = [r for r in records if not r.superseded]
        return float(np.mean([r.ok and slo.request_ok(r.ttft_intended_ms, r.tpot_ms) for r in judged])) \
            if judged else float("nan")

    def errors(records):
        return float(np.mean([not r.ok for r in records])) if records else float("nan")

    return {"ttft_p50_ms": pct("ttft_intended_ms", 50), "ttft_p99_ms": pct("ttft_intended_ms", 99),
            "tpot_p50_ms": pct("tpot_ms", 50), "tpot_p99_ms": pct("tpot_ms", 99), "e2e_p50_ms": pct("e2e_ms", 50),
            "good_fraction": good, "error_rate": errors}


def compare(a: list[RequestRecord], b: list[RequestRecord], slo: SloConfig, *, resamples: int = 1000,
            confidence: float = 0.95, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for name, f in _figures(slo).items():
        value_a, value_b = f(a), f(b)
        diffs = []
        for _ in range(resamples):
            ra = [a[i] for i in rng.integers(0, len(a), len(a))] if a else []
            rb = [b[i] for i in rng.integers(0, len(b), len(b))] if b else []
            diffs.append(f(rb) - f(ra))
        diffs = np.array([d for d in diffs if np.isfinite(d)])
        lo, hi = (np.quantile(diffs, [(1 - confidence) / 2, 1 - (1 - confidence) / 2]) if diffs.size
                  else (float("nan"), float("nan")))
        out[name] = {"a": value_a, "b": value_b, "diff": value_b - value_a, "ci_low": float(lo), "ci_high": float(hi),
                     "relative": (value_b - value_a) / value_a if value_a not in (0, 0.0) and np.isfinite(value_a) else None,
                     "significant": bool(diffs.size and (lo > 0 or hi < 0))}
    return {"confidence": confidence, "resamples": resamples, "n_a": len(a), "n_b": len(b), "figures": out}


def format_comparison(result: dict, name_a: str, name_b: str) -> str:
    conf = f"{result['confidence']:.0%}"
    lines = [f"A = {name_a} ({result['n_a']} requests)", f"B = {name_b} ({result['n_b']} requests)",
             f"{'figure':<16}{'A':>12}{'B':>12}{'B - A':>12}   {conf} CI of B - A", "-" * 78]
    for name, f in result["figures"].items():
        mark = "  *" if f["significant"] else ""
        rel = f" ({f['relative']:+.1%})" if f["relative"] is not None else ""
        lines.append(f"{name:<16}{f['a']:>12.3f}{f['b']:>12.3f}{f['diff']:>12.3f}   "
                     f"[{f['ci_low']:.3f}, {f['ci_high']:.3f}]{rel}{mark}")
    lines.append("* the interval excludes 0: a real difference at this confidence")
    return "\n".join(lines)
