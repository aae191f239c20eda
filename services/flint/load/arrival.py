"""When jobs start: precomputed intended send times, or a closed loop.

Open-loop kinds compute every job's intended start before the run, from the
seed alone, so a slow server cannot slow the schedule down (no coordinated
omission) and several generator processes can each take a disjoint share of
the same schedule:
- poisson: exponential gaps at `rate_per_s` jobs/s;
- gamma: gamma gaps with the same mean and coefficient of variation `cv`
  (cv > 1 is burstier than Poisson, cv = 1 is Poisson);
- constant: evenly spaced;
- users: `users` simulated developers, each starting its next job when the
  previous one's last request was sent plus a think time. A developer types
  whatever the server does, so this is open loop too.
The closed kind runs `concurrency` loops that each wait for their job to end,
then think, then start the next: intended time = when the loop was ready.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from flint.errors import InvalidArgument

KINDS = ("poisson", "gamma", "constant", "users", "closed")


@dataclass(frozen=True)
class ArrivalConfig:
    kind: str = "poisson"
    rate_per_s: float = 1.0          # jobs/s for poisson, gamma, constant
    cv: float = 2.0                  # gamma: coefficient of variation of the gaps
    users: int = 1                   # users kind
    concurrency: int = 1             # closed kind
    think_time_ms: tuple[float, float] = (500.0, 2000.0)   # users and closed kinds: uniform range

    def __post_init__(self):
        if isinstance(self.think_time_ms, list):
            object.__setattr__(self, "think_time_ms", tuple(self.think_time_ms))
        if self.kind not in KINDS:
            raise InvalidArgument(f"arrival kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.rate_per_s <= 0 or self.cv <= 0:
            raise InvalidArgument("arrival rate_per_s and cv must be > 0")
        if self.users < 1 or self.concurrency < 1:
            raise InvalidArgument("arrival users and concurrency must be >= 1")
        lo, hi = self.think_time_ms
        if not 0 <= lo <= hi:
            raise InvalidArgument(f"think_time_ms must be [low, high] with 0 <= low <= high, got {self.think_time_ms}")

    @property
    def level(self) -> float:
        """The load knob a capacity search turns: rate, users or concurrency."""
        return {"users": self.users, "closed": self.concurrency}.get(self.kind, self.rate_per_s)

    def at_level(self, level: float) -> "ArrivalConfig":
        import dataclasses

        if self.kind == "users":
            return dataclasses.replace(self, users=max(1, int(round(level))))
        if self.kind == "closed":
            return dataclasses.replace(self, concurrency=max(1, int(round(level))))
        return dataclasses.replace(self, rate_per_s=float(level))

    @property
    def level_unit(self) -> str:
        return {"users": "users", "closed": "concurrent loops"}.get(self.kind, "jobs/s")


def open_schedule(arrival: ArrivalConfig, seed: int, duration_s: float, job_span_ms) -> list[tuple[float, int]]:
    """[(intended start ms, job index)] sorted by time, for every job starting before `duration_s`.

    `job_span_ms(i)` is the span of job i (only the users kind needs it).
    """
    if arrival.kind == "closed":
        raise InvalidArgument("a closed-loop arrival has no precomputed schedule")
    rng = random.Random(f"arrival:{seed}")
    end_ms = duration_s * 1000.0
    out: list[tuple[float, int]] = []
    if arrival.kind == "users":
        for user in range(arrival.users):
            t = rng.uniform(0, arrival.think_time_ms[1])     # users do not all start at once
            k = 0
            while t < end_ms:
                index = user + k * arrival.users
                out.append((t, index))
                t += job_span_ms(index) + rng.uniform(*arrival.think_time_ms)
                k += 1
        return sorted(out)
    mean_ms = 1000.0 / arrival.rate_per_s
    t, index = 0.0, 0
    while True:
        if arrival.kind == "poisson":
            t += rng.expovariate(1.0 / mean_ms)
        elif arrival.kind == "gamma":
            shape = 1.0 / arrival.cv ** 2
            t += rng.gammavariate(shape, mean_ms / shape)
        else:
            t += mean_ms if index else 0.0
        if t >= end_ms:
            return out
        out.append((t, index))
        index += 1


def share(schedule: list, generator: int, generators: int) -> list:
    """Generator k's disjoint share: every n-th entry in time order, so each share has the same shape."""
    if not 0 <= generator < generators:
        raise InvalidArgument(f"generator index must be in [0, {generators}), got {generator}")
    return schedule[generator::generators]
