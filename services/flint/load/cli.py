"""`flint load run|capacity|compare|mock-server|report` (wired from flint.cli as `main(argv)`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from flint.errors import FlintError, InvalidArgument


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _pairs(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise InvalidArgument(f"{what} {item!r} must look like KEY=VALUE (VALUE may be JSON)")
        key, value = item.split("=", 1)
        out[key.strip()] = _value(value)
    return out


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", help="scenario file (TOML/JSON, see loadtests/scenarios/); flags override it")
    g = p.add_argument_group("workload")
    g.add_argument("--scenario", help="keystroke, short-fim, large-fim, repo-context, edit, interrupt, redirect, "
                   "mix, replay")
    g.add_argument("--seed", type=int, help="scenario seed: same seed, same jobs (default 0)")
    g.add_argument("--param", action="append", default=[], metavar="K=V", help="scenario parameter (JSON value)")
    g.add_argument("--chars-per-token", type=float, help="prompt size conversion (default 3.6)")
    g = p.add_argument_group("arrival")
    g.add_argument("--arrival", choices=["poisson", "gamma", "constant", "users", "closed"],
                   help="how jobs arrive: open-loop poisson/gamma/constant at --rate, --users developers, or "
                        "closed loops of --concurrency (default poisson)")
    g.add_argument("--rate", type=float, help="jobs/s (poisson, gamma, constant)")
    g.add_argument("--cv", type=float, help="gamma: coefficient of variation of gaps (burstiness)")
    g.add_argument("--users", type=int, help="users arrival: simulated developers")
    g.add_argument("--concurrency", type=int, help="closed arrival: concurrent loops")
    g.add_argument("--think-ms", help="LOW,HIGH think time between a user's jobs")
    g = p.add_argument_group("bounds")
    g.add_argument("--duration-s", type=float, help="no job starts after this (default 30, max 3600)")
    g.add_argument("--max-requests", type=int, help="hard cap on requests sent (default 20000)")
    g.add_argument("--drain-s", type=float, help="grace for in-flight requests after the duration (default 15)")
    g = p.add_argument_group("target")
    g.add_argument("--target", choices=["flint", "openai"], help="protocol (default flint)")
    g.add_argument("--address", help="flint: HOST:PORT (default 127.0.0.1:50051); openai: base URL")
    g.add_argument("--model", help="model name to request")
    g.add_argument("--server-metrics", metavar="URL", help="the server's Prometheus endpoint (loopback), scraped "
                   "before and after the run to check the client's figures against the server's")
    g.add_argument("--fim-template", choices=["auto", "suffix", "qwen", "starcoder", "deepseek", "codellama", "plain"],
                   help="openai: the model family's FIM tokens in the prompt (works on vLLM, SGLang, llama.cpp), "
                        "'suffix' for servers that take the suffix field, or 'auto' (default): the family from the "
                        "model name, else 'suffix'")
    g.add_argument("--i-own-the-target", action="store_true",
                   help="allow a target that is not on this machine (only for deployments you own)")
    g = p.add_argument_group("SLO and output")
    g.add_argument("--slo", help="preset: keystroke, mlperf-interactive, custom")
    g.add_argument("--slo-ttft-ms", type=float, help="TTFT limit at the SLO percentile (overrides the preset)")
    g.add_argument("--slo-tpot-ms", type=float, help="TPOT limit at the SLO percentile (overrides the preset)")
    g.add_argument("--slo-percentile", type=float, help="percentile the limits apply to, e.g. 99 (overrides the preset)")
    g.add_argument("--generators", type=int, help="generator processes (default 1)")
    g.add_argument("--stall-ms", type=float, help="gap between deltas counted as a stall (default 100)")
    g.add_argument("--label", help="name shown on the report")
    g.add_argument("--out", "-o", help="output directory (default loadtests/results/<scenario>-<time>)")
    g.add_argument("--quiet", action="store_true", help="no progress display")


def _config(args):
    from flint.load.config import load_run_config

    over: dict = {}
    for name in ("scenario", "seed", "generators", "stall_ms", "label"):
        if getattr(args, name) is not None:
            over[name] = getattr(args, name)
    params = _pairs(args.param, "--param")
    if args.chars_per_token is not None:
        params["chars_per_token"] = args.chars_per_token
    if params:
        over["params"] = params
    arrival = {k: v for k, v in {"kind": args.arrival, "rate_per_s": args.rate, "cv": args.cv, "users": args.users,
                                 "concurrency": args.concurrency}.items() if v is not None}
    if args.think_ms:
        arrival["think_time_ms"] = [float(x) for x in args.think_ms.split(",")]
    bounds = {k: v for k, v in {"duration_s": args.duration_s, "max_requests": args.max_requests,
                                "drain_s": args.drain_s}.items() if v is not None}
    target = {k: v for k, v in {"protocol": args.target, "address": args.address, "model": args.model,
                                "fim_template": args.fim_template,
                                "metrics_url": args.server_metrics}.items() if v is not None}
    if args.i_own_the_target:
        target["allow_remote"] = True
    slo = {k: v for k, v in {"preset": args.slo, "ttft_ms": args.slo_ttft_ms, "tpot_ms": args.slo_tpot_ms,
                             "percentile": args.slo_percentile}.items() if v is not None}
    for key, value in (("arrival", arrival), ("bounds", bounds), ("target", target), ("slo", slo)):
        if value:
            over[key] = value
    return load_run_config(args.file, over)


def _out_dir(args, config, kind: str) -> Path:
    import time

    if args.out:
        return Path(args.out)
    return Path("loadtests/results") / f"{kind}-{config.scenario}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_run(args) -> int:
    from flint.load.orchestrate import run
    from flint.load.report import write_run

    config = _config(args)
    if args.record_trace:
        from flint.load.runner import build_schedule
        from flint.load.scenarios import make_scenario
        from flint.load.trace import record_schedule, write_trace

        scenario = make_scenario(config.scenario, config.seed, config.params)
        n = write_trace(args.record_trace, record_schedule(scenario, build_schedule(config, scenario)),
                        scenario.describe())
        print(f"wrote {n} requests to {args.record_trace}", file=sys.stderr)
    if args.generator_index is not None:
        from flint.load.orchestrate import run_share

        if args.start_at is None:
            raise InvalidArgument("--generator-index needs --start-at UNIX_SECONDS, the same on every machine")
        out = run_share(config, args.generator_index, args.start_at, _out_dir(args, config, "share"))
        print(f"share {args.generator_index} of {config.generators} written to {out}; merge all shares with "
              "`flint load merge DIR...`")
        return 0
    result = run(config, quiet=True if args.quiet else None, label=config.label)
    out = write_run(result, _out_dir(args, config, "run"))
    _print_summary(result.report["summary"])
    print(f"report: {out / 'report.html'}  (JSON: {out / 'report.json'}, records: {out / 'records.jsonl'})")
    return 0


def _ms(value, count: int | None = None, q: float = 0.0) -> str:
    """Milliseconds, or "–" (with the samples it needs) for a percentile of too few samples."""
    from flint.load.quantile import min_samples, reliable

    if count is not None and not reliable(q, count):
        return f"– (n={count}, needs {min_samples(q)})"
    return "–" if value is None else f"{value:.1f} ms"


def _print_summary(s: dict) -> None:
    m, slo = s["metrics"], s["slo"]
    pct, q = f"p{slo['percentile']:g}", slo["percentile"] / 100.0
    n_ttft, n_tpot = m["ttft_intended_ms"]["count"], m["tpot_ms"]["count"]
    print(f"requests {s['requests']} (errors {s['errors']}, interrupted {s['interrupted']}) | offered "
          f"{s['offered_rps']:.2f}/s achieved {s['achieved_rps']:.2f}/s goodput {s['goodput_rps']:.2f}/s "
          f"(good {(s['good_fraction'] or 0):.1%})")
    print(f"TTFT p50 {_ms(m['ttft_intended_ms']['p50'], n_ttft, 0.5)} {pct} "
          f"{_ms(slo['ttft_at_percentile_ms'], n_ttft, q)} | TPOT p50 {_ms(m['tpot_ms']['p50'], n_tpot, 0.5)} "
          f"{pct} {_ms(slo['tpot_at_percentile_ms'], n_tpot, q)} | SLO {slo['preset']}: "
          f"{'PASS' if slo['pass'] else 'FAIL'}")
    if s["fell_behind"]:
        print("WARNING: the load generator fell behind: " + "; ".join(s["fell_behind_reasons"]))


def cmd_capacity(args) -> int:
    from flint.load.capacity import SearchConfig, search_capacity
    from flint.load.report import write_capacity

    config = _config(args)
    search = SearchConfig(**{k: v for k, v in {
        "start": args.start, "factor": args.factor, "max_level": args.max_level, "max_steps": args.max_steps,
        "bracket_steps": args.bracket_steps, "step_duration_s": args.step_duration_s,
        "calibration_step_s": args.calibration_step_s}.items() if v is not None}, calibrate=not args.no_calibrate)
    out = _out_dir(args, config, "capacity")
    cap = search_capacity(config, search, out, quiet=True if args.quiet else None)
    write_capacity(cap, out)
    for st in cap["steps"]:
        s = st["summary"]
        print(f"level {st['level']:>8g}: offered {s['offered_rps']:.2f}/s achieved {s['achieved_rps']:.2f}/s "
              f"TTFT p{s['slo']['percentile']:g} {_ms(s['slo']['ttft_at_percentile_ms'])} "
              f"TPOT p{s['slo']['percentile']:g} {_ms(s['slo']['tpot_at_percentile_ms'])} -> "
              f"{'pass' if st['pass'] else 'FAIL'}{' (generator behind)' if s['fell_behind'] else ''}")
    print(cap["verdict"])
    print(f"report: {out / 'capacity.html'}")
    return 0


def cmd_compare(args) -> int:
    from flint.load.compare import compare, format_comparison
    from flint.load.progress import CountProgress, should_show
    from flint.load.report import load_run
    from flint.load.slo import SloConfig

    report_a, a = load_run(args.a)
    _, b = load_run(args.b)
    slo = SloConfig(**report_a["config"]["slo"])
    with CountProgress("bootstrap resamples", should_show(args.quiet)) as bar:
        result = compare(a, b, slo, resamples=args.resamples, progress=bar.update)
    print(format_comparison(result, args.a, args.b))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def cmd_merge(args) -> int:
    from flint.load.orchestrate import merge_dirs
    from flint.load.report import write_run

    result = merge_dirs(args.dirs)
    out = write_run(result, args.out)
    _print_summary(result.report["summary"])
    print(f"report: {out / 'report.html'}")
    return 0


def cmd_report(args) -> int:
    from flint.load.html import render_capacity, render_run
    from flint.load.report import load_capacity, load_run

    path = Path(args.path)
    if args.recompute:
        from flint.load.report import rewrite_run

        cap_path = path / "capacity.json"
        if cap_path.exists():
            cap = json.loads(cap_path.read_text())
            for st in cap["steps"]:
                st["summary"] = rewrite_run(path / st["dir"])["summary"]
            cap_path.write_text(json.dumps(cap, indent=1))
        else:
            rewrite_run(path)
    if (path / "capacity.json").exists() or path.name == "capacity.json":
        html, default = render_capacity(load_capacity(path)), "capacity.html"
    else:
        html, default = render_run(load_run(path)[0]), "report.html"
    out = Path(args.out) if args.out else (path if path.is_dir() else path.parent) / default
    out.write_text(html)
    print(f"wrote {out}")
    return 0


def cmd_mock(args) -> int:
    from flint.addresses import is_loopback
    from flint.load.mock_server import MockConfig, start_mock_server

    if not is_loopback(args.host):
        raise InvalidArgument("the mock server binds loopback only (127.0.0.1 or ::1)")
    config = MockConfig(tokens_per_s=args.tokens_per_s, ttft_ms=args.ttft_ms, coalesce=args.coalesce,
                        max_streams=args.max_streams)

    async def serve() -> None:
        if args.protocol == "openai":
            from flint.load.mock_openai import start_openai_mock

            runner, port = await start_openai_mock(config, args.host, args.port)
            print(f"mock OpenAI-compatible server on http://{args.host}:{port}", flush=True)
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()
        server, port = await start_mock_server(config, f"{args.host}:{args.port}")
        print(f"mock flint.v1 server on {args.host}:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flint load", description="Load-test a flint deployment (or an "
                                     "OpenAI-compatible server) on this machine and report where capacity runs out.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="one bounded load run -> report.json, records.jsonl, report.html")
    _run_options(p)
    p.add_argument("--record-trace", metavar="FILE", help="also write the run's schedule as a replayable trace")
    p.add_argument("--generator-index", type=int, help="several machines: run only this share of --generators "
                   "and write it for `flint load merge`")
    p.add_argument("--start-at", type=float, help="with --generator-index: common start, unix seconds")
    p = sub.add_parser("merge", help="merge generator shares from several machines into one report")
    p.add_argument("dirs", nargs="+", help="share directories written with --generator-index")
    p.add_argument("--out", "-o", required=True, help="directory for the merged run")
    p = sub.add_parser("capacity", help="ramp/bracket the load until the SLO breaks; report the knee")
    _run_options(p)
    p.add_argument("--start", type=float, help="first load level (default 1)")
    p.add_argument("--factor", type=float, help="ramp multiplier (default 2)")
    p.add_argument("--max-level", type=float, help="stop ramping here (default 64)")
    p.add_argument("--max-steps", type=int, help="most load steps in all, ramp and bisection (default 8)")
    p.add_argument("--bracket-steps", type=int, help="bisection steps after the ramp (default 2)")
    p.add_argument("--step-duration-s", type=float, help="duration of each step (default 20)")
    p.add_argument("--calibration-step-s", type=float, help="duration of each self-calibration step (default 5)")
    p.add_argument("--no-calibrate", action="store_true", help="skip the generator's self-calibration")
    p = sub.add_parser("compare", help="differences between two runs with bootstrap confidence intervals")
    p.add_argument("a", help="run directory A (the baseline)")
    p.add_argument("b", help="run directory B (compared with A)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples per figure (default 1000)")
    p.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    p.add_argument("--json", help="also write the comparison as JSON here")
    p = sub.add_parser("report", help="re-render the HTML report of a run or capacity directory")
    p.add_argument("path", help="a run or capacity directory")
    p.add_argument("--recompute", action="store_true", help="derive summaries again from records.jsonl first")
    p.add_argument("--out", "-o", help="write the HTML here (default: report.html in the directory)")
    p = sub.add_parser("mock-server", help="serve the mock token server (calibration) on loopback")
    p.add_argument("--protocol", choices=["flint", "openai"], default="flint", help="flint.v1 gRPC or OpenAI HTTP")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (default 0: any free port, printed)")
    p.add_argument("--tokens-per-s", type=float, default=1000.0, help="token rate of each stream (default 1000)")
    p.add_argument("--ttft-ms", type=float, default=5.0, help="delay before the first token (default 5)")
    p.add_argument("--coalesce", type=int, default=1, help="tokens per delta (default 1)")
    p.add_argument("--max-streams", type=int, default=0, help="streams served at once, others queue (default 0: no limit)")
    sub.add_parser("soak", add_help=False,
                   help="bounded soak with injected faults on a local multi-node cluster -> soak.json, soak.md "
                        "(flint load soak --help)")
    return parser


def main(argv: list[str]) -> int:
    if argv[:1] == ["soak"]:   # its own flags (flint.load.soak)
        from flint.load.soak import main as soak_main

        try:
            return soak_main(argv[1:])
        except FlintError as exc:
            print(f"flint load soak: {exc.message}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "capacity": cmd_capacity, "compare": cmd_compare, "report": cmd_report,
                "mock-server": cmd_mock, "merge": cmd_merge}
    try:
        return commands[args.cmd](args)
    except FlintError as exc:
        print(f"flint load {args.cmd}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
