"""Entry point of one front-end worker process: `python -m flint.frontend.worker --config JSON`.

`flint serve` starts N of these. Each prints one JSON line
`{"event": "listening", "worker_id": ..., "port": ..., "event_loop": ...}` on
stdout once it serves, then runs until SIGTERM/SIGINT, when it drains
gracefully. It runs on uvloop (`FLINT_EVENT_LOOP=asyncio` for asyncio's own
loop): per one-token request the worker's main thread spent 225-350 us less
CPU on it (loadtests/results/relay-cuts-20261130).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from flint.config import FrontendConfig, from_mapping
from flint.errors import FlintError
from flint.frontend.server import FrontendWorker


async def serve(config: FrontendConfig, parent_pid: int = 0) -> None:
    worker = FrontendWorker(config)
    await worker.start()
    print(json.dumps({"event": "listening", "worker_id": worker.worker_id, "port": worker.port,
                      "http_port": worker.http_port, "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}),
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_watch_parent(parent_pid, stop)) if parent_pid else None
    try:
        await stop.wait()
    finally:
        if watchdog is not None:
            watchdog.cancel()
        await worker.stop()


async def _watch_parent(parent_pid: int, stop: asyncio.Event) -> None:
    """Drain and exit if the `flint serve` that started us dies without stopping us (e.g. SIGKILL)."""
    while os.getppid() == parent_pid:
        await asyncio.sleep(1.0)
    stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flint-frontend-worker", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="FrontendConfig as a JSON object")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        from flint import env

        values = json.loads(args.config)
        if not values.get("redis_url"):     # from a Secret via FLINT_REDIS_URL: no password on the command line
            values["redis_url"] = env.redis_url() or ""
        config = from_mapping(FrontendConfig, values, where="front-end config")
        from flint.observability.setup import configure_logging

        configure_logging(config.observability, args.log_level)  # JSON lines when observability.json_logs
        run(serve(config, args.parent_pid), env.event_loop())
    except FlintError as exc:
        print(json.dumps({"event": "error", "message": exc.message}), flush=True)
        print(f"flint front-end worker: {exc.message}", file=sys.stderr)
        return 1
    return 0


def run(main, event_loop: str) -> None:
    """Run `main` to its end on `event_loop` ("uvloop" or "asyncio", see flint.env.event_loop)."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


if __name__ == "__main__":
    sys.exit(main())
