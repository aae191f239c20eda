"""Run one load test over one or several generator processes and merge their results.

Every generator computes the same seeded schedule and takes a disjoint share
(flint.load.arrival.share); all of them count time from one wall-clock start
instant, so their records line up. Each writes its records (JSONL) and its
Partial (histograms + counters) to a work directory; the parent merges the
partials (never percentiles) and concatenates the records.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from flint.load.config import RunConfig
from flint.load.consistency import consistency, scrape
from flint.load.progress import Progress, should_show
from flint.load.record import RequestRecord
from flint.load.runner import Counters, Generator
from flint.load.scenarios import make_scenario
from flint.load.summary import Partial, partial_of, summarize

SCHEMA = "flint.load.run/1"
START_DELAY_S = 1.0      # children need a moment to import and connect before the common start


@dataclass
class RunResult:
    report: dict
    records: list[RequestRecord]


def machine_info() -> dict:
    info = {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
            "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


async def _generator_main(config: RunConfig, index: int, start_at: float, counters: Counters,
                          progress: Progress | None = None):
    gen = Generator(config, index, start_at, counters)
    task = asyncio.create_task(gen.run())
    while not task.done():
        await asyncio.wait({task}, timeout=0.25)
        if progress is not None:
            progress.update(**vars(counters))
    return task.result()


def _child(config_json: dict, index: int, start_at: float, workdir: str, shared) -> None:
    """Entry of a generator process: run, then write records and partial to `workdir`."""
    from flint.config import from_mapping

    config = from_mapping(RunConfig, config_json, where="run config")
    counters = _SharedCounters(shared, index)
    with start_at.get_lock():           # imports are done: tell the parent, then wait for the common start
        start_at[1] += 1
    while start_at[0] == 0:
        time.sleep(0.01)
    result = asyncio.run(_generator_main(config, index, start_at[0], counters))
    _write_share(Path(workdir), config, result)


class _SharedCounters(Counters):
    """Counters that mirror themselves into a shared array for the parent's progress line."""

    def __init__(self, shared, index: int):
        object.__setattr__(self, "_shared", shared)
        object.__setattr__(self, "_base", index * 4)
        super().__init__()

    def __setattr__(self, name, value):
        object.__setattr__(self, name, value)
        if name in ("sent", "done", "errors", "tokens"):
            self._shared[self._base + ("sent", "done", "errors", "tokens").index(name)] = value


def _write_share(workdir: Path, config: RunConfig, result) -> None:
    with open(workdir / f"records-{result.index}.jsonl", "w") as f:
        for record in result.records:
            f.write(json.dumps(record.to_json()) + "\n")
    partial = partial_of(result.records, config.slo, config.stall_ms)
    (workdir / f"partial-{result.index}.json").write_text(json.dumps(
        {"partial": partial.to_dict(), "stats": result.stats, "target": result.target_info,
         "scheduled_jobs": result.scheduled_jobs, "config": config.to_json()}))


def run(config: RunConfig, *, quiet: bool | None = None, label: str = "") -> RunResult:
    """Run `config` to the end (bounded by its duration, request cap and drain) and return the merged result."""
    show = should_show(quiet)
    total_s = config.bounds.duration_s + START_DELAY_S
    start_at = time.time() + START_DELAY_S
    before = _scrape(config)
    with tempfile.TemporaryDirectory(prefix="flint-load-") as tmp:
        workdir = Path(tmp)
        with Progress(total_s, label or config.scenario, show) as progress:
            if config.generators == 1:
                counters = Counters()
                result = asyncio.run(_generator_main(config, 0, start_at, counters, progress))
                _write_share(workdir, config, result)
            else:
                _run_processes(config, workdir, progress)
        result = merge_shares(config, workdir)
    result.report["server_metrics"] = {"url": config.target.metrics_url, "scraped": before is not None}
    result.report["consistency"] = consistency(result.records, before, _scrape(config) if before else None)
    return result


def _scrape(config: RunConfig) -> dict | None:
    if not config.target.metrics_url:
        return None
    try:
        return scrape(config.target.metrics_url)
    except OSError as exc:
        print(f"flint load: cannot scrape {config.target.metrics_url}: {exc}", file=sys.stderr)
        return None


def _run_processes(config: RunConfig, workdir: Path, progress: Progress) -> None:
    ctx = mp.get_context("spawn")
    shared = ctx.Array("q", 4 * config.generators, lock=False)
    start = ctx.Array("d", 2)        # [common start (unix s), generators ready]
    procs = [ctx.Process(target=_child, args=(config.to_json(), k, start, str(workdir), shared), daemon=True)
             for k in range(config.generators)]
    for p in procs:
        p.start()
    ready_by = time.time() + 120
    while start[1] < config.generators and time.time() < ready_by and all(p.is_alive() for p in procs):
        time.sleep(0.02)
    start[0] = time.time() + 0.5
    deadline = time.time() + START_DELAY_S + config.bounds.duration_s + config.bounds.drain_s + 60
    try:
        while any(p.is_alive() for p in procs) and time.time() < deadline:
            time.sleep(0.25)
            totals = [sum(shared[k * 4 + i] for k in range(config.generators)) for i in range(4)]
            progress.update(**dict(zip(("sent", "done", "errors", "tokens"), totals)))
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
    failed = [k for k, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"load generator process(es) {failed} failed (exit codes "
                           f"{[procs[k].exitcode for k in failed]}); see their stderr above")


def merge_shares(config: RunConfig, workdir: Path) -> RunResult:
    """Merge every generator's partial and records found in `workdir` into one result."""
    partial, generators, records, target = Partial(), [], [], {}
    for path in sorted(workdir.glob("partial-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        share = json.loads(path.read_text())
        partial.merge(Partial.from_dict(share["partial"]))
        generators.append({**share["stats"], "scheduled_jobs": share["scheduled_jobs"]})
        target = {**share["target"], **target}
        with open(workdir / f"records-{share['stats']['index']}.jsonl") as f:
            records.extend(RequestRecord.from_json(json.loads(line)) for line in f)
    records.sort(key=lambda r: r.t_intended_ms)
    summary = summarize(partial, slo=config.slo, duration_s=config.bounds.duration_s,
                        lag_budget_ms=config.lag_budget_ms, generators=generators)
    for g in generators:
        g.pop("loop_lag_hist", None)
    report = {"schema": SCHEMA, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "label": config.label, "machine": machine_info(), "config": config.to_json(),
              "scenario": make_scenario(config.scenario, config.seed, config.params).describe(),
              "target": target, "generators": generators, "summary": summary, "partial": partial.to_dict()}
    return RunResult(report, records)


def run_share(config: RunConfig, index: int, start_at: float, out_dir: str | Path) -> Path:
    """One generator of a run spread over several machines: run share `index` of `config.generators`,
    starting at the agreed wall-clock instant `start_at`, and write its share to `out_dir` for `merge_dirs`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(_generator_main(config, index, start_at, Counters()))
    _write_share(out, config, result)
    return out


def merge_dirs(dirs: list[str | Path]) -> RunResult:
    """Merge shares written by `run_share` on several machines (copy their directories here first)."""
    import shutil

    with tempfile.TemporaryDirectory(prefix="flint-load-merge-") as tmp:
        config_json = None
        for d in dirs:
            for path in Path(d).glob("partial-*.json"):
                share = json.loads(path.read_text())
                if config_json is not None and share["config"] != config_json:
                    from flint.errors import InvalidArgument

                    raise InvalidArgument(f"{path} was run with a different configuration; shares of one run only")
                config_json = share["config"]
                shutil.copy(path, tmp)
                shutil.copy(path.with_name(path.name.replace("partial-", "records-").replace(".json", ".jsonl")), tmp)
        if config_json is None:
            from flint.errors import InvalidArgument

            raise InvalidArgument("no generator shares (partial-N.json) found in " + ", ".join(map(str, dirs)))
        from flint.config import from_mapping

        return merge_shares(from_mapping(RunConfig, config_json, where="share config"), Path(tmp))
