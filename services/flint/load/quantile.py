"""The one quantile definition of `flint load`, shared by the report, the histograms and `compare`.

Quantile q of n samples is the nearest-rank value: the k-th smallest sample
with k = ceil(q * n) (at least 1), i.e. the smallest sample with at least a
share q of the samples at or below it (numpy's method="inverted_cdf"). It is
always a value that was observed; no interpolation between two requests.
The report reads it from a LogHistogram (the bucket of that same k-th value,
within the histogram's precision); `compare` reads it from the exact values.

A percentile drawn from few samples is mostly noise: p99 of 50 requests is
simply the largest one. `reliable(q, n)` asks for at least MIN_TAIL_SAMPLES
samples at or above the quantile (n * (1 - q) >= 5: p50 needs 10 samples,
p90 50, p99 500, p99.9 5000); reports print "–" with the count needed
instead of a number that is not one.
"""

from __future__ import annotations

import math

import numpy as np

MIN_TAIL_SAMPLES = 5
_EPS = 1e-9   # 0.29 * 100 is 28.999999999999996 in floating point; the rank is still 29


def rank(q: float, n: int) -> int:
    """1-based rank of quantile q in [0, 1] among n >= 1 samples."""
    return min(n, max(1, math.ceil(q * n - _EPS)))


def exact(values, q: float) -> float | None:
    """Quantile q of the given values (None when there are none)."""
    data = sorted(values)
    return float(data[rank(q, len(data)) - 1]) if data else None


def min_samples(q: float) -> int:
    """Fewest samples for which quantile q is printed."""
    if q >= 1.0:
        return 1
    return max(1, math.ceil(MIN_TAIL_SAMPLES / (1.0 - q) - _EPS))


def reliable(q: float, n: int) -> bool:
    return n >= min_samples(q)


def row_quantiles(matrix: np.ndarray, qs: tuple[float, ...]) -> dict[float, np.ndarray]:
    """Quantiles of each row of `matrix` (rows x samples), NaN entries ignored; NaN for a row with no values.

    Vectorised for the bootstrap: one sort of the whole matrix, then one gather per quantile.
    """
    ordered = np.sort(matrix, axis=1)                       # NaN sort last
    counts = np.count_nonzero(~np.isnan(matrix), axis=1)    # [rows]
    out = {}
    for q in qs:
        k = np.clip(np.ceil(q * counts - _EPS).astype(np.int64), 1, None) - 1        # [rows], 0-based rank
        k = np.minimum(k, matrix.shape[1] - 1)
        picked = np.take_along_axis(ordered, k[:, None], axis=1)[:, 0]
        out[q] = np.where(counts > 0, picked, np.nan)
    return out
