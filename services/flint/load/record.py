"""One request as the load generator saw it, and the metrics derived from it.

All times are milliseconds since the run's common start (every generator
process shares that origin), so records of several processes merge directly.

Metric definitions (the tests in tests/load/test_load_metrics.py pin them):
- TTFT: first delta carrying >= 1 token, minus the actual send time
  (`ttft_ms`) or minus the intended send time (`ttft_intended_ms`, free of
  coordinated omission: a late send counts against the system).
- Per-token ITL: a delta carrying n tokens after a gap g from the previous
  token-bearing delta contributes n samples of g / n. Tokens coalesced into
  the first delta get no ITL sample (their time is in TTFT), so the samples
  sum to last-token time minus first-token time.
- Per-delta gaps and stalls: gaps between consecutive token-bearing deltas;
  a stall is a gap above the threshold.
- TPOT: (last token - first token) / (tokens - 1), MLPerf's definition.
- End-to-end: end of the request (final, error or closed stream) minus send.
- Interrupt-to-stop: when the client sent an interrupt (or redirect), the
  time until the request's stream ended; tokens after interrupt count tokens
  in deltas received after the interrupt was sent, and deltas after the
  server's acknowledgement (seq > ack's last_seq) are protocol violations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class RequestRecord:
    id: str
    job: int
    step: int
    label: str
    kind: str = "complete"                    # complete | edit
    generator: int = 0
    t_intended_ms: float = 0.0
    t_sent_ms: float | None = None
    t_accepted_ms: float | None = None
    t_end_ms: float | None = None
    # [t_ms, seq, token_count] per delta, in arrival order.
    deltas: list[list[float]] = field(default_factory=list)
    finish_reason: str = ""                  # eos | length | stop | interrupted | time_limit | closed | error
    error_code: str = ""                     # gRPC status name, HTTP_<status>, or a client-side cause
    error_message: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    withheld_tokens: int = 0                 # Final.withheld_tokens: generated tokens no delta covers
    cached_prompt_tokens: int | None = None
    server: dict[str, float] = field(default_factory=dict)   # Final.timings (queue_ms, prefill_ms, ...)
    replica_id: str = ""
    interrupt_mode: str = ""                 # interrupt | redirect | close (HTTP) | "" when none
    t_interrupt_ms: float | None = None
    t_interrupt_ack_ms: float | None = None
    ack_last_seq: int | None = None
    max_tokens: int = 0
    prompt_chars: int = 0
    resumes: int = 0                         # Resume calls after lost streams (flint target, resume = true)

    # ------------------------------------------------------------ derived
    @property
    def ok(self) -> bool:
        return not self.error_code

    @property
    def token_deltas(self) -> list[list[float]]:
        return [d for d in self.deltas if d[2] > 0]

    @property
    def tokens(self) -> int:
        return int(sum(d[2] for d in self.deltas))

    @property
    def accounted_tokens(self) -> int:
        """Tokens the client can account for: its deltas' counts plus the Final's withheld tokens."""
        return self.tokens + self.withheld_tokens

    @property
    def t_first_token_ms(self) -> float | None:
        token_deltas = self.token_deltas
        return token_deltas[0][0] if token_deltas else None

    @property
    def ttft_ms(self) -> float | None:
        first = self.t_first_token_ms
        return None if first is None or self.t_sent_ms is None else first - self.t_sent_ms

    @property
    def ttft_intended_ms(self) -> float | None:
        first = self.t_first_token_ms
        return None if first is None else first - self.t_intended_ms

    @property
    def schedule_lag_ms(self) -> float | None:
        return None if self.t_sent_ms is None else self.t_sent_ms - self.t_intended_ms

    @property
    def delta_gaps_ms(self) -> list[float]:
        times = [d[0] for d in self.token_deltas]
        return [b - a for a, b in zip(times, times[1:])]

    @property
    def itl_ms(self) -> list[float]:
        """Per-token inter-token latencies: each delta's gap split evenly over its tokens."""
        token_deltas = self.token_deltas
        samples: list[float] = []
        for prev, cur in zip(token_deltas, token_deltas[1:]):
            n = int(cur[2])
            samples.extend([(cur[0] - prev[0]) / n] * n)
        return samples

    @property
    def tpot_ms(self) -> float | None:
        token_deltas = self.token_deltas
        if self.tokens < 2 or not token_deltas:
            return None
        return (token_deltas[-1][0] - token_deltas[0][0]) / (self.tokens - 1)

    def stalls(self, threshold_ms: float) -> int:
        return sum(1 for gap in self.delta_gaps_ms if gap > threshold_ms)

    @property
    def max_gap_ms(self) -> float | None:
        gaps = self.delta_gaps_ms
        return max(gaps) if gaps else None

    @property
    def e2e_ms(self) -> float | None:
        return None if self.t_end_ms is None or self.t_sent_ms is None else self.t_end_ms - self.t_sent_ms

    @property
    def interrupted(self) -> bool:
        return self.t_interrupt_ms is not None

    @property
    def interrupt_to_stop_ms(self) -> float | None:
        if self.t_interrupt_ms is None or self.t_end_ms is None:
            return None
        return max(0.0, self.t_end_ms - self.t_interrupt_ms)

    @property
    def tokens_after_interrupt(self) -> int | None:
        if self.t_interrupt_ms is None:
            return None
        return int(sum(d[2] for d in self.deltas if d[0] > self.t_interrupt_ms))

    @property
    def deltas_after_ack(self) -> int | None:
        if self.ack_last_seq is None:
            return None
        return sum(1 for d in self.deltas if d[1] > self.ack_last_seq)

    @property
    def seq_errors(self) -> int:
        """Deltas whose seq is not the next one (gaps, duplicates, reordering)."""
        seqs = [0] + [int(d[1]) for d in self.deltas]
        return sum(1 for prev, cur in zip(seqs, seqs[1:]) if cur != prev + 1)

    @property
    def superseded(self) -> bool:
        """Interrupted before its first token: the user moved on, so no latency to judge."""
        first = self.t_first_token_ms
        return self.ok and self.t_interrupt_ms is not None and (first is None or first > self.t_interrupt_ms)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "RequestRecord":
        return cls(**data)
