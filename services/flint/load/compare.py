"""`flint load compare A B`: what changed between two runs, with bootstrap confidence intervals.

For each figure (TTFT p50/p99 from intended time, TPOT p50/p99, end-to-end
p50, good fraction, error rate) the per-request records of A and B are
resampled with replacement `resamples` times; the interval of B - A is the
central `confidence` share of the resampled differences. A change whose
interval excludes 0 is reported as significant.

Percentiles use the report's definition (flint.load.quantile: nearest rank),
so A's and B's values here match their reports within the histogram
precision. The bootstrap is vectorised: each record becomes a row of numbers
once, a batch of resamples is one index matrix, and each figure of a batch is
one sort or mean over that matrix (10K records x 1000 resamples in seconds).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from flint.load.quantile import exact, row_quantiles
from flint.load.record import RequestRecord
from flint.load.slo import SloConfig

# figure -> (column, quantile or None for a mean)
FIGURES = {"ttft_p50_ms": ("ttft_intended_ms", 0.5), "ttft_p99_ms": ("ttft_intended_ms", 0.99),
           "tpot_p50_ms": ("tpot_ms", 0.5), "tpot_p99_ms": ("tpot_ms", 0.99), "e2e_p50_ms": ("e2e_ms", 0.5),
           "good_fraction": ("good", None), "error_rate": ("error", None)}
_CELLS_PER_BATCH = 2_000_000    # resamples x records per batch: ~16 MB per column


def columns(records: list[RequestRecord], slo: SloConfig) -> dict[str, np.ndarray]:
    """One float per record and column; NaN where the record has no value (no token, superseded)."""
    def col(values) -> np.ndarray:
        return np.array([np.nan if v is None else float(v) for v in values], dtype=float)

    return {"ttft_intended_ms": col(r.ttft_intended_ms for r in records), "tpot_ms": col(r.tpot_ms for r in records),
            "e2e_ms": col(r.e2e_ms for r in records),
            "good": col(None if r.superseded else float(r.ok and slo.request_ok(r.ttft_intended_ms, r.tpot_ms))
                        for r in records),
            "error": col(float(not r.ok) for r in records)}


def _point(cols: dict[str, np.ndarray], column: str, q: float | None) -> float:
    values = cols[column][~np.isnan(cols[column])]
    if not values.size:
        return float("nan")
    return float(exact(values, q)) if q is not None else float(values.mean())


def _batch(cols: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Each figure over each resample of one batch; idx is [resamples, records]."""
    out: dict[str, np.ndarray] = {}
    by_column: dict[str, list[tuple[str, float | None]]] = {}
    for name, (column, q) in FIGURES.items():
        by_column.setdefault(column, []).append((name, q))
    for column, figures in by_column.items():
        matrix = cols[column][idx]                                            # [resamples, records]
        qs = tuple(q for _, q in figures if q is not None)
        quantiles = row_quantiles(matrix, qs) if qs else {}
        for name, q in figures:
            if q is not None:
                out[name] = quantiles[q]
            else:
                n = np.count_nonzero(~np.isnan(matrix), axis=1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[name] = np.where(n > 0, np.nansum(matrix, axis=1) / n, np.nan)
    return out


def compare(a: list[RequestRecord], b: list[RequestRecord], slo: SloConfig, *, resamples: int = 1000,
            confidence: float = 0.95, seed: int = 0, progress: Callable[[int, int], None] | None = None) -> dict:
    """Figures of A and B with bootstrap intervals of B - A; `progress(done, total)` after each batch."""
    rng = np.random.default_rng(seed)
    cols_a, cols_b = columns(a, slo), columns(b, slo)
    diffs = {name: [] for name in FIGURES}
    per_batch = max(1, _CELLS_PER_BATCH // max(1, len(a), len(b)))
    done = 0
    while done < resamples and a and b:
        k = min(per_batch, resamples - done)
        fa = _batch(cols_a, rng.integers(0, len(a), (k, len(a))))
        fb = _batch(cols_b, rng.integers(0, len(b), (k, len(b))))
        for name in FIGURES:
            diffs[name].append(fb[name] - fa[name])
        done += k
        if progress is not None:
            progress(done, resamples)
    out = {}
    for name, (column, q) in FIGURES.items():
        value_a, value_b = _point(cols_a, column, q), _point(cols_b, column, q)
        d = np.concatenate(diffs[name]) if diffs[name] else np.array([])
        d = d[np.isfinite(d)]
        lo, hi = (np.quantile(d, [(1 - confidence) / 2, 1 - (1 - confidence) / 2]) if d.size
                  else (float("nan"), float("nan")))
        out[name] = {"a": value_a, "b": value_b, "diff": value_b - value_a, "ci_low": float(lo), "ci_high": float(hi),
                     "relative": (value_b - value_a) / value_a if value_a != 0 and np.isfinite(value_a) else None,
                     "significant": bool(d.size and (lo > 0 or hi < 0))}
    return {"confidence": confidence, "resamples": resamples, "n_a": len(a), "n_b": len(b),
            "quantile": "nearest rank (flint.load.quantile)", "figures": out}


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
