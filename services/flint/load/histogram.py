"""A mergeable log-bucketed histogram for latencies in milliseconds.

Why not percentiles per generator: a p99 of several processes cannot be
averaged. Each generator fills one of these; merging adds bucket counts, so a
merged histogram is identical to the one a single process would have filled
with the same values (bucket boundaries depend only on `precision`).

A value v > 0 lands in bucket floor(log(v) / log(1 + precision)); a value's
reported quantile is its bucket's geometric midpoint, within `precision / 2`
relative error. Zero and negative values share bucket `None` (reported as 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from flint.load.quantile import rank

DEFAULT_PRECISION = 0.01
_ZERO = "z"


@dataclass
class LogHistogram:
    precision: float = DEFAULT_PRECISION
    counts: dict[int | str, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def __post_init__(self) -> None:
        self._log_base = math.log1p(self.precision)

    def record(self, value: float, n: int = 1) -> None:
        key: int | str = _ZERO if value <= 0 else math.floor(math.log(value) / self._log_base)
        self.counts[key] = self.counts.get(key, 0) + n
        self.count += n
        self.total += value * n
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def record_many(self, values: Iterable[float]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: "LogHistogram") -> "LogHistogram":
        """Add `other` into self (same precision required) and return self."""
        if other.precision != self.precision:
            raise ValueError(f"cannot merge histograms of precision {self.precision} and {other.precision}")
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def _value(self, key: int | str) -> float:
        if key == _ZERO:
            return 0.0
        return math.exp((key + 0.5) * self._log_base)  # type: ignore[operator]

    def quantile(self, q: float) -> float | None:
        """Value at quantile q in [0, 1] (None when empty): the bucket of the nearest-rank sample, clamped to
        the exact min and max."""
        if self.count == 0:
            return None
        k = rank(q, self.count)      # the shared nearest-rank definition (flint.load.quantile)
        seen = 0
        for key in self._sorted_keys():
            seen += self.counts[key]
            if seen >= k:
                return min(max(self._value(key), self.min), self.max)
        return self.max

    def count_above(self, value: float) -> int:
        """How many recorded values lie in buckets entirely above `value` (within the precision)."""
        return sum(n for key, n in self.counts.items() if self._value(key) > value * (1 + self.precision))

    def cdf(self) -> list[tuple[float, float]]:
        """(value, fraction of values <= it) for each non-empty bucket, ascending."""
        points, seen = [], 0
        for key in self._sorted_keys():
            seen += self.counts[key]
            points.append((min(max(self._value(key), self.min), self.max), seen / self.count))
        return points

    def _sorted_keys(self) -> list[int | str]:
        return sorted(self.counts, key=lambda k: -math.inf if k == _ZERO else k)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def summary(self) -> dict:
        """Count, mean, min/max and the usual percentiles, for reports."""
        out = {"count": self.count, "mean": _r(self.mean),
               "min": _r(self.min if self.count else None), "max": _r(self.max if self.count else None)}
        for name, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99), ("p999", 0.999)):
            out[name] = _r(self.quantile(q))
        return out

    def to_dict(self) -> dict:
        return {"precision": self.precision, "count": self.count, "total": self.total,
                "min": self.min if self.count else None, "max": self.max if self.count else None,
                "counts": {str(k): v for k, v in self.counts.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "LogHistogram":
        hist = cls(precision=data["precision"])
        hist.counts = {(k if k == _ZERO else int(k)): int(v) for k, v in data["counts"].items()}
        hist.count, hist.total = int(data["count"]), float(data["total"])
        if hist.count:
            hist.min, hist.max = float(data["min"]), float(data["max"])
        return hist


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
