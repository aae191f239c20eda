"""Capacity search: raise the load until the SLO breaks, and report the knee.

The load knob is the arrival's level (jobs/s for poisson/gamma/constant,
users for `users`, loops for `closed`). A ramp multiplies it by `factor`
until a step fails; bracketing then bisects between the last passing and
the first failing level. A step passes when its SLO holds AND the generator
kept its schedule: a step where the generator fell behind says nothing about
the server, so the search stops there.

Self-calibration: the same scenario is first run against the mock token
server (answers at once) at rising load; the highest load the generator
drives without falling behind is its ceiling. A knee at or above the ceiling
is not claimed: the report says the capacity is at least that, generator-bound.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from flint.load.config import RunConfig
from flint.load.mock_server import MockConfig, MockProcess
from flint.load.orchestrate import run
from flint.load.report import CAPACITY_SCHEMA, write_run


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    start: float = 1.0
    factor: float = 2.0
    max_level: float = 64.0
    max_steps: int = 8
    bracket_steps: int = 2
    step_duration_s: float = 20.0
    calibrate: bool = True
    calibration_step_s: float = 5.0
    calibration_max_steps: int = 6


def _at(config: RunConfig, level: float, duration_s: float, target=None) -> RunConfig:
    bounds = dataclasses.replace(config.bounds, duration_s=duration_s)
    changes = {"arrival": config.arrival.at_level(level), "bounds": bounds}
    if target is not None:
        changes["target"] = target
    return dataclasses.replace(config, **changes)


def _level(config: RunConfig, value: float) -> float:
    return float(round(value)) if config.arrival.kind in ("users", "closed") else round(value, 3)


def calibrate(config: RunConfig, search: SearchConfig, *, quiet: bool | None = None) -> dict:
    """The generator's ceiling on this scenario: highest level it drives against an instant mock server."""
    steps, ceiling = [], None
    mock = MockConfig(tokens_per_s=5000.0, ttft_ms=1.0, coalesce=1)
    protocol = config.target.protocol      # calibrate the adapter the real run uses
    with MockProcess(mock, protocol=protocol) as server:
        target = dataclasses.replace(config.target, address=server.address, allow_remote=False, metrics_url="")
        level = search.start
        for _ in range(search.calibration_max_steps):
            result = run(_at(config, level, search.calibration_step_s, target), quiet=quiet,
                         label=f"calibrate {level:g}")
            s = result.report["summary"]
            healthy = not s["fell_behind"] and s["errors"] == 0
            steps.append({"level": level, "sent_rps": s["sent_rps"], "tokens_per_s": s["tokens_per_s"],
                          "fell_behind": s["fell_behind"], "reasons": s["fell_behind_reasons"], "errors": s["errors"]})
            if not healthy:
                break
            ceiling = steps[-1]
            if level >= search.max_level:
                break
            level = _level(config, min(search.max_level, level * search.factor * 2))
    return {"mock": dataclasses.asdict(mock), "steps": steps,
            "ceiling_level": ceiling["level"] if ceiling else None,
            "ceiling_rps": ceiling["sent_rps"] if ceiling else None,
            "ceiling_tokens_per_s": ceiling["tokens_per_s"] if ceiling else None,
            "reached_max_level": bool(ceiling) and ceiling["level"] >= search.max_level}


def search_capacity(config: RunConfig, search: SearchConfig, out_dir: str | Path, *,
                    quiet: bool | None = None) -> dict:
    """Ramp, then bracket; every step's run is written under out_dir/step-NN-<level>/."""
    out = Path(out_dir)
    calibration = calibrate(config, search, quiet=quiet) if search.calibrate else None
    steps: list[dict] = []

    def step(level: float) -> bool:
        result = run(_at(config, level, search.step_duration_s), quiet=quiet, label=f"level {level:g}")
        name = f"step-{len(steps):02d}-{level:g}"
        write_run(result, out / name)
        s = result.report["summary"]
        ok = s["slo"]["pass"] and not s["fell_behind"]
        steps.append({"level": level, "dir": name, "pass": ok, "summary": s, "report": result.report})
        return ok

    level, last_pass, first_fail = _level(config, search.start), None, None
    for _ in range(search.max_steps):
        if step(level):
            last_pass = level
            if level >= search.max_level:
                break
            level = _level(config, min(search.max_level, level * search.factor))
        else:
            first_fail = level
            break
    for _ in range(search.bracket_steps if last_pass is not None and first_fail is not None else 0):
        mid = _level(config, (last_pass + first_fail) / 2)
        if mid in (last_pass, first_fail):
            break
        if step(mid):
            last_pass = mid
        else:
            first_fail = mid
    steps.sort(key=lambda st: st["level"])
    # A calibration that never saturated the generator within max_level gives no ceiling to respect.
    ceiling = calibration["ceiling_level"] if calibration and not calibration["reached_max_level"] else None
    knee, generator_bound, verdict = judge(steps, last_pass, first_fail, ceiling, config.arrival.level_unit)
    unit = config.arrival.level_unit
    return {"schema": CAPACITY_SCHEMA, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "level_kind": config.arrival.kind, "level_unit": unit, "search": dataclasses.asdict(search),
            "slo": config.slo.describe(), "config": config.to_json(), "calibration": calibration,
            "knee": {"level": knee["level"], "dir": knee["dir"], "summary_rps": knee["summary"]["achieved_rps"],
                     "goodput_rps": knee["summary"]["goodput_rps"]} if knee else None,
            "first_failing_level": first_fail, "generator_bound": generator_bound, "verdict": verdict,
            "steps": steps}


def judge(steps: list[dict], last_pass: float | None, first_fail: float | None, ceiling: float | None,
          unit: str) -> tuple[dict | None, bool, str]:
    """(knee step, generator-bound?, verdict). No capacity above the generator's ceiling is claimed."""
    knee = next((st for st in steps if st["level"] == last_pass), None)
    behind = any(st["summary"]["fell_behind"] for st in steps if st["level"] == first_fail)
    generator_bound = knee is not None and (behind or (ceiling is not None and knee["level"] >= ceiling))
    if knee is None:
        verdict = f"SLO not met even at the lowest load ({steps[0]['level']:g} {unit})" if steps else "no steps ran"
    elif generator_bound:
        bound = min(x for x in (ceiling, first_fail, knee["level"]) if x is not None)
        verdict = (f"capacity ≥ {bound:g} {unit}: the load generator reached its own ceiling before the server "
                   "broke its SLO, so no higher figure is claimed")
    elif first_fail is None:
        verdict = f"no knee up to {knee['level']:g} {unit} (the search's max_level): capacity ≥ that"
    else:
        verdict = f"knee at {knee['level']:g} {unit}: the highest load meeting the SLO (breaks at {first_fail:g})"
    return knee, generator_bound, verdict
