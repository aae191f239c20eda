"""Recorded traces and their replay.

Format `flint.load.trace/1`, JSON lines: a header line
    {"format": "flint.load.trace/1", "source": {...}, "created_utc": ...}
then one line per request, in time order:
    {"t_ms": 1234.5, "job": 7, "step": 0, "spec": {RequestSpec fields}}
where t_ms is the request's intended send time from the start of the trace.
A trace can be written from any scenario's schedule (`flint load run ...
--record-trace FILE`) or by hand / by a tool from real editor logs. Replaying
it (`scenario = "replay"`, params {trace = FILE, speedup = 1.0}) sends the
same requests at the same offsets (divided by `speedup`) on the same jobs,
so interrupts and redirects between steps of a job are kept.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from flint.errors import InvalidArgument
from flint.load.scenarios import Scenario
from flint.load.workload import Job, RequestSpec, Step

FORMAT = "flint.load.trace/1"


def write_trace(path: str | Path, entries, source: dict) -> int:
    """Write (t_ms, job, step, spec) entries; returns how many requests were written."""
    n = 0
    with open(path, "w") as f:
        f.write(json.dumps({"format": FORMAT, "source": source,
                            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
        for t_ms, job, step, spec in sorted(entries, key=lambda e: (e[0], e[1], e[2])):
            f.write(json.dumps({"t_ms": round(t_ms, 3), "job": job, "step": step, "spec": spec.to_json()}) + "\n")
            n += 1
    return n


def record_schedule(scenario: Scenario, schedule: list[tuple[float, int]]) -> list:
    """Trace entries of every request a schedule would send."""
    entries = []
    for t0, job_index in schedule:
        for k, step in enumerate(scenario.job(job_index).steps):
            entries.append((t0 + step.offset_ms, job_index, k, step.spec))
    return entries


@dataclass(frozen=True)
class ReplayParams:
    trace: str = ""
    speedup: float = 1.0


class Replay(Scenario):
    """Jobs and start times read from a trace file; `schedule()` replaces the arrival process."""

    name = "replay"
    Params = ReplayParams

    def __init__(self, seed, params=None):
        super().__init__(seed, params)
        if not self.params.trace or self.params.speedup <= 0:
            raise InvalidArgument("replay needs params.trace = PATH of a flint.load.trace/1 file and speedup > 0")
        path = Path(self.params.trace)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise InvalidArgument(f"cannot read trace {path}: {exc.strerror}") from exc
        header = json.loads(lines[0]) if lines else {}
        if header.get("format") != FORMAT:
            raise InvalidArgument(f"{path} is not a {FORMAT} trace (first line must be its header)")
        steps: dict[int, list[tuple[float, int, RequestSpec]]] = defaultdict(list)
        for line in lines[1:]:
            if line.strip():
                e = json.loads(line)
                steps[e["job"]].append((e["t_ms"] / self.params.speedup, e["step"], RequestSpec.from_json(e["spec"])))
        self.source = header.get("source", {})
        self._jobs, self._starts = [], []
        for i, job_id in enumerate(sorted(steps, key=lambda j: min(s[0] for s in steps[j]))):
            items = sorted(steps[job_id], key=lambda s: s[1])
            t0 = min(s[0] for s in items)
            self._jobs.append(Job(i, "replay", tuple(Step(t - t0, spec) for t, _, spec in items)))
            self._starts.append(t0)

    def _job(self, rng, index: int) -> Job:
        return self._jobs[index]          # recorded, so the seed plays no part

    def schedule(self) -> list[tuple[float, int]]:
        return list(zip(self._starts, range(len(self._jobs))))

    def describe(self) -> dict:
        out = super().describe()
        out["trace_source"] = self.source
        out["trace_requests"] = sum(len(j.steps) for j in self._jobs)
        return out
