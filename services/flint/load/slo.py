"""Service-level objectives and goodput.

A run passes its SLO when the chosen percentile of TTFT and of TPOT are
within their limits and errors stay under `max_error_rate`. Goodput is the
rate of requests that each met both limits; errors are misses. Requests the
client itself interrupted before their first token (the user typed on) are
"superseded": they have no latency to judge and are left out of both.

Presets:
- mlperf-interactive: TTFT p99 <= 450 ms, TPOT p99 <= 40 ms, the limits of
  MLPerf Inference's interactive LLM scenario (Llama-2-70B, v5.0).
- keystroke: TTFT p99 <= 250 ms (a suggestion must land before the next
  keystroke at 150-250 ms gaps would replace it) and TPOT p99 <= 25 ms
  (a 40-token suggestion complete within ~1 s), error rate <= 1%.
- custom: give ttft_ms, tpot_ms, percentile yourself.
"""

from __future__ import annotations

from dataclasses import dataclass

from flint.errors import InvalidArgument

PRESETS = {
    "mlperf-interactive": {"ttft_ms": 450.0, "tpot_ms": 40.0, "percentile": 99.0, "max_error_rate": 0.01},
    "keystroke": {"ttft_ms": 250.0, "tpot_ms": 25.0, "percentile": 99.0, "max_error_rate": 0.01},
}


@dataclass(frozen=True)
class SloConfig:
    preset: str = "keystroke"                # a PRESETS name or "custom"
    ttft_ms: float | None = None             # overrides of the preset's limits
    tpot_ms: float | None = None
    percentile: float | None = None
    max_error_rate: float | None = None

    def __post_init__(self):
        if self.preset not in (*PRESETS, "custom"):
            raise InvalidArgument(f"slo preset must be one of {', '.join(PRESETS)}, custom; got {self.preset!r}")
        if self.preset == "custom" and (self.ttft_ms is None or self.tpot_ms is None):
            raise InvalidArgument("a custom slo needs ttft_ms and tpot_ms")
        limits = self.limits
        if limits["ttft_ms"] <= 0 or limits["tpot_ms"] <= 0 or not 0 < limits["percentile"] <= 100:
            raise InvalidArgument("slo ttft_ms and tpot_ms must be > 0 and percentile in (0, 100]")

    @property
    def limits(self) -> dict[str, float]:
        base = dict(PRESETS.get(self.preset, {"percentile": 99.0, "max_error_rate": 0.01}))
        for key in ("ttft_ms", "tpot_ms", "percentile", "max_error_rate"):
            if getattr(self, key) is not None:
                base[key] = float(getattr(self, key))
        return base

    def request_ok(self, ttft_ms: float | None, tpot_ms: float | None) -> bool:
        """One request met both limits (a request with one token has no TPOT to miss)."""
        limits = self.limits
        return ttft_ms is not None and ttft_ms <= limits["ttft_ms"] and (tpot_ms is None or tpot_ms <= limits["tpot_ms"])

    def describe(self) -> dict:
        return {"preset": self.preset, **self.limits}
