"""The `flint` command: serve, complete, edit, status, and lazy dispatch to other tools.

Heavy imports (Ray, torch, grpc) happen inside the subcommand that needs
them, so `flint --help` is instant and `flint complete` never loads torch.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from pathlib import Path

from flint import __version__, env
from flint.errors import FlintError, InvalidArgument

# Subcommands implemented by other modules as `main(argv: list[str]) -> int`.
DISPATCH = {
    ("bench", "engine"): "flint.bench.engine",
    ("bench", "cluster"): "flint.bench.cluster",
    ("bench", "keystroke"): "flint.bench.keystroke",
    ("load",): "flint.load.cli",
    ("cluster",): "flint.cluster.local",
    ("keys",): "flint.security.keys",
}


def _dispatch(argv: list[str]) -> int | None:
    for words, module_name in DISPATCH.items():
        if tuple(argv[: len(words)]) == words:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and module_name.startswith(exc.name):
                    print(f"flint {' '.join(words)}: not available in this build ({module_name} is not "
                          "installed yet)", file=sys.stderr)
                    return 2
                raise
            return module.main(argv[len(words):])
    return None


def _serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="run the service (Redis, Ray, engine replicas, front-end workers)",
                       description="Start flint on this machine: an embedded Valkey unless --redis-url, a local "
                       "Ray instance unless --ray-address, engine replicas and front-end workers. Without "
                       "--model it serves a small demo checkpoint whose output is not meaningful.")
    p.add_argument("--model", help="HF checkpoint directory (config.json, *.safetensors, tokenizer.json); "
                   "default: the demo checkpoint, made once and cached")
    p.add_argument("--redis-url", help="use this Redis instead of an embedded Valkey (env FLINT_REDIS_URL)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one "
                   "(env FLINT_RAY_ADDRESS)")
    p.add_argument("--host", help="address the front-end workers bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="public gRPC port, shared by all workers (default 50051; 0 = any)")
    p.add_argument("--http-port", type=int, help="OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, "
                   "/v1/models), /health and /metrics, shared by all workers (default 8000; 0 = any; -1 = off)")
    p.add_argument("--workers", type=int, help="front-end worker processes (default 1)")
    p.add_argument("--replicas", type=int, help="engine replicas (default 1)")
    p.add_argument("--replica-num-cpus", type=float, help="Ray CPUs held by each replica (default 1)")
    p.add_argument("--ray-num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--routing", choices=["affinity", "least_loaded"], help="replica routing policy")
    p.add_argument("--engine-transport", choices=["link", "grpc"],
                   help="the workers' hop to the replicas: the engine link (one framed connection per replica) or "
                   "a gRPC Generate call per request (default link)")
    p.add_argument("--quantization", choices=["none", "int8", "int4"],
                   help="weight-only quantization at load: int8 per output channel, int4 in groups of "
                   "engine.quant_group_size (default 128) columns; every Linear and the embedding (default none)")
    p.add_argument("--config", metavar="FILE", help="TOML or JSON file whose keys mirror these flags "
                   "(plus an [engine] table of engine settings); flags override it")


def _request_flags(p) -> None:
    p.add_argument("--address", help="front-end address host:port (default: env FLINT_ADDRESS, else the "
                   "running `flint serve` on this machine, else 127.0.0.1:50051)")
    p.add_argument("--max-tokens", type=int, help="most tokens to generate (default: the server's)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (0 = off)")
    p.add_argument("--seed", type=int, help="same seed and input give the same output")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--model", default="", help="model name (default: the server's)")
    p.add_argument("--stats", action="store_true", help="print token counts and timings to stderr at the end")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flint", description="Latency-first serving of code models: "
                                     "streaming completions and edits over gRPC.")
    parser.add_argument("--version", action="version", version=f"flint {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)

    p = sub.add_parser("complete", help="stream a fill-in-the-middle completion to the terminal",
                       description="Complete code at a cursor. The text before the cursor comes from PREFIX, "
                       "from --file with --cursor LINE:COL, or from stdin.")
    p.add_argument("prefix", nargs="?", help="text before the cursor")
    p.add_argument("--suffix", default="", help="text after the cursor")
    p.add_argument("--file", help="source file; with --cursor, prefix/suffix are split at the cursor")
    p.add_argument("--cursor", help="LINE:COL (1-based) in --file; default: end of file")
    p.add_argument("--document", action="store_true",
                   help="document mode: open --file once on a Session stream, then complete at the cursor by "
                   "reference (what an editor plugin does)")
    p.add_argument("--type", dest="type_text", default="", metavar="TEXT",
                   help="with --document: type TEXT at the cursor one character at a time, one edit and one "
                   "completion per keystroke (use --stats to see each keystroke's timings)")
    _request_flags(p)

    p = sub.add_parser("edit", help="stream an edit of a file region to the terminal",
                       description="Rewrite lines A-B of FILE following INSTRUCTION; prints the replacement.")
    p.add_argument("--file", required=True, help="the source file to edit")
    p.add_argument("--lines", required=True, metavar="A-B", help="1-based inclusive line range")
    p.add_argument("--instruction", "-i", required=True, help="what to change")
    _request_flags(p)

    p = sub.add_parser("status", help="replicas, load and sessions from Redis")
    p.add_argument("--redis-url", help="default: env FLINT_REDIS_URL, else the running `flint serve` on this "
                   "machine")

    for words in DISPATCH:
        if len(words) == 1:
            sub.add_parser(words[0], help=f"(see `flint {words[0]} --help`)", add_help=False)
    bench = sub.add_parser("bench", help="benchmarks of the engine and of a cluster",
                           description="Benchmarks; each writes JSON and Markdown results.")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    bench_sub.add_parser("engine", add_help=False,
                         help="engine step latency and throughput on this machine (flint bench engine --help)")
    bench_sub.add_parser("cluster", add_help=False,
                         help="a multi-node local cluster under load (flint bench cluster --help)")
    bench_sub.add_parser("keystroke", add_help=False,
                         help="keystroke TTFT end to end, document vs full-text mode, 0-128K context "
                         "(flint bench keystroke --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    dispatched = _dispatch(argv)
    if dispatched is not None:
        return dispatched
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            from flint import serve

            return serve.run(serve_config(args))
        if args.command in ("complete", "edit"):
            from flint.cli_requests import run_request

            return asyncio.run(run_request(args, args.address or default_address()))
        if args.command == "status":
            from flint.cli_requests import run_status

            return asyncio.run(run_status(args.redis_url or default_redis_url()))
    except FlintError as exc:
        print(f"flint {args.command}: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def serve_config(args: argparse.Namespace):
    """ServeConfig from --config FILE, then env defaults, then flags (flags win)."""
    from flint.config import ServeConfig, from_mapping, load_config_file

    values = load_config_file(args.config) if args.config else {}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    values.setdefault("redis_url", env.redis_url() or "")
    values.setdefault("ray_address", env.ray_address() or "")
    for name in ("model", "redis_url", "ray_address", "host", "port", "http_port", "workers", "replicas", "replica_num_cpus",
                 "ray_num_cpus", "routing", "engine_transport"):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    if args.quantization is not None:
        values["engine"] = {**values.get("engine", {}), "quantization": args.quantization}
    return from_mapping(ServeConfig, values, where=args.config or "flags")


def default_address() -> str:
    from flint.serve import read_state

    return env.server_address() or read_state().get("address") or "127.0.0.1:50051"


def default_redis_url() -> str:
    from flint.serve import read_state

    url = env.redis_url() or read_state().get("redis_url")
    if not url:
        raise InvalidArgument("no running `flint serve` found; pass --redis-url redis://HOST:PORT")
    return url


def read_source(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


if __name__ == "__main__":
    sys.exit(main())
