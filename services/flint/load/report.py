"""Writing and reading results: report.json (versioned), records.jsonl, report.html.

A run directory holds report.json (schema `flint.load.run/1`: config,
scenario, machine, target, generators, summary, and the merged partial whose
histograms let any later tool recompute percentiles), records.jsonl (one
request per line, see flint.load.record) and report.html. A capacity
directory holds capacity.json (schema `flint.load.capacity/1`), capacity.html
and one run directory per step.
"""

from __future__ import annotations

import json
from pathlib import Path

from flint.errors import InvalidArgument
from flint.load.html import render_capacity, render_run
from flint.load.record import RequestRecord

RUN_SCHEMA = "flint.load.run/1"
CAPACITY_SCHEMA = "flint.load.capacity/1"
_RUN_KEYS = ("schema", "created_utc", "machine", "config", "scenario", "target", "generators", "summary", "partial")


def validate_run(report: dict) -> None:
    """Raise InvalidArgument unless `report` is a run report of a schema this version reads."""
    missing = [k for k in _RUN_KEYS if k not in report]
    if missing or report.get("schema") != RUN_SCHEMA:
        raise InvalidArgument(f"not a {RUN_SCHEMA} report (schema {report.get('schema')!r}, missing {missing})")


def write_run(result, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = dict(result.report, records_file="records.jsonl")
    validate_run(report)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    with open(out / "records.jsonl", "w") as f:
        for record in result.records:
            f.write(json.dumps(record.to_json()) + "\n")
    (out / "report.html").write_text(render_run(report))
    return out


def load_run(path: str | Path) -> tuple[dict, list[RequestRecord]]:
    """A run report and its records, from its directory or its report.json."""
    path = Path(path)
    report_path = path / "report.json" if path.is_dir() else path
    try:
        report = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"cannot read a run report at {report_path}: {exc}") from exc
    if report.get("schema") == CAPACITY_SCHEMA:
        knee = report.get("knee") or {}
        step_dir = knee.get("dir") or (report["steps"][-1]["dir"] if report.get("steps") else None)
        if step_dir is None:
            raise InvalidArgument(f"{report_path} is a capacity report with no steps")
        return load_run(report_path.parent / step_dir)
    validate_run(report)
    records_path = report_path.parent / report.get("records_file", "records.jsonl")
    records = []
    if records_path.exists():
        with open(records_path) as f:
            records = [RequestRecord.from_json(json.loads(line)) for line in f if line.strip()]
    return report, records


def write_capacity(cap: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slim = dict(cap, steps=[{k: v for k, v in st.items() if k != "report"} for st in cap["steps"]])
    (out / "capacity.json").write_text(json.dumps(slim, indent=1))
    (out / "capacity.html").write_text(render_capacity(cap))
    return out


def load_capacity(path: str | Path) -> dict:
    """A capacity report with each step's run report attached again (for re-rendering)."""
    path = Path(path)
    cap_path = path / "capacity.json" if path.is_dir() else path
    cap = json.loads(cap_path.read_text())
    if cap.get("schema") != CAPACITY_SCHEMA:
        raise InvalidArgument(f"{cap_path} is not a {CAPACITY_SCHEMA} report")
    for st in cap["steps"]:
        st["report"], _ = load_run(cap_path.parent / st["dir"])
    return cap


def recompute(report: dict, records: list[RequestRecord]) -> dict:
    """The report with summary and partial derived again from its records (after a metric definition changed)."""
    from flint.load.config import RunConfig
    from flint.config import from_mapping
    from flint.load.summary import partial_of, summarize

    config = from_mapping(RunConfig, report["config"], where="report config")
    partial = partial_of(records, config.slo, config.stall_ms)
    summary = summarize(partial, slo=config.slo, duration_s=config.bounds.duration_s,
                        lag_budget_ms=config.lag_budget_ms, generators=report["generators"])
    return dict(report, summary=summary, partial=partial.to_dict())


def rewrite_run(path: str | Path) -> dict:
    """Recompute a run directory's report.json and report.html from its records.jsonl."""
    report, records = load_run(path)
    report = recompute(report, records)
    Path(path, "report.json").write_text(json.dumps(report, indent=1))
    Path(path, "report.html").write_text(render_run(report))
    return report
