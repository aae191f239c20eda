"""Bounded soak run with faults under a keystroke load -> loadtests/results/soak.json and soak.md.

    python tests/reliability/soak_driver.py --duration-s 60 --out loadtests/results

Real front-end worker processes (three, sharing one port with SO_REUSEPORT),
two engine replica processes (real ReplicaServer, paced engine: see
rel_support.py), an embedded Valkey. Keystroke load: each simulated editor
types one character, then asks for a completion of the longer prefix, with
several editors at once; every completion is checked word for word against
the deterministic expected text, so a lost or repeated token is counted.
Faults, in a loop: SIGKILL a front-end worker (clients resume elsewhere) and
start a replacement, SIGKILL an engine replica and start a replacement,
SIGTERM-drain a worker and replace it (rolling upgrade). Worker w0 and
replica r0 are never faulted, so their memory growth spans the whole run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from rel_support import Cluster, PacedEngine, expected_text  # noqa: E402

from flint.client import FlintClient  # noqa: E402
from flint.valkey import EmbeddedValkey  # noqa: E402


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def editor(address: str, stop: asyncio.Event, stats: dict, editor_id: int, max_tokens: int) -> None:
    rng = random.Random(editor_id)
    async with FlintClient(address) as client:
        prefix = f"# editor {editor_id}\ndef "
        while not stop.is_set():
            prefix += rng.choice("abcdefghijklmnopqrstuvwxyz_(")
            before = client.resumes
            words = []
            try:
                async for message in client.complete(prefix, max_tokens=max_tokens, timeout_s=60):
                    if message.WhichOneof("kind") == "delta":
                        words.append(message.delta.text)
                expected = PacedEngine.words_for(prefix, max_tokens)
                lost = sum(1 for a, b in zip(expected, "".join(words).split(" ")) if a.strip() != b.strip())
                lost += abs(len(expected) - len([w for w in "".join(words).split(" ") if w]))
                stats["tokens_lost"] += lost
                stats["tokens_received"] += max_tokens
                stats["outcomes"]["completed"] += 1
                if client.resumes > before:
                    stats["outcomes"]["completed_after_resume"] += 1
                if "".join(words) != expected_text(prefix, max_tokens):
                    stats["outcomes"]["completed_wrong_text"] += 1
            except Exception as exc:  # noqa: BLE001 - counted by type
                stats["outcomes"][f"failed_{type(exc).__name__}"] += 1
            await asyncio.sleep(rng.uniform(0.0, 0.05))  # typing gap


async def soak(duration_s: float, editors: int, max_tokens: int) -> dict:
    valkey = EmbeddedValkey()
    url = valkey.start()
    cluster = Cluster(url, f"soak{secrets.token_hex(3)}")
    stats = {"tokens_lost": 0, "tokens_received": 0, "outcomes": Counter()}
    faults = []
    try:
        for i in range(2):
            await cluster.add_replica_process(f"r{i}", token_interval_s=0.005)
        first = await cluster.add_worker_process("w0", reuse_port=True, grace_period_s=5.0)
        port = int(first.rsplit(":", 1)[1])
        for i in (1, 2):
            await cluster.add_worker_process(f"w{i}", port=port, reuse_port=True, grace_period_s=5.0)
        stop = asyncio.Event()
        load = [asyncio.create_task(editor(first, stop, stats, e, max_tokens)) for e in range(editors)]
        await asyncio.sleep(3.0)  # warm-up, then the memory baseline
        rss_start = {name: rss_mib(pid) for name, pid in cluster.pids().items()}
        rss_start["driver"] = rss_mib(os.getpid())
        started = time.monotonic()
        step, n = 0, 3
        while time.monotonic() - started < duration_s:
            await asyncio.sleep(min(duration_s / 9, 8.0))
            # w0 and r0 are never faulted, so their memory growth covers the whole run.
            live_workers = [name for name in cluster.pids() if name.startswith("w") and name != "w0"]
            live_replicas = [name for name in cluster.pids() if name.startswith("r") and name != "r0"]
            kind = ("kill_worker", "kill_replica", "drain_worker")[step % 3]
            if kind == "kill_worker":
                victim = live_workers[0]
                cluster.kill_process(victim)
                await cluster.add_worker_process(f"w{n}", port=port, reuse_port=True, grace_period_s=5.0)
            elif kind == "kill_replica":
                victim = live_replicas[0]
                cluster.kill_process(victim)
                await cluster.add_replica_process(f"r{n}", token_interval_s=0.005)
            else:
                victim = live_workers[0]
                await cluster.add_worker_process(f"w{n}", port=port, reuse_port=True, grace_period_s=5.0)
                await asyncio.to_thread(cluster.stop_process(victim).wait, 30)
            faults.append({"t_s": round(time.monotonic() - started, 1), "fault": kind, "process": victim,
                           "replacement": f"{'r' if kind == 'kill_replica' else 'w'}{n}"})
            n += 1
            step += 1
        elapsed = time.monotonic() - started
        rss_end = {name: rss_mib(pid) for name, pid in cluster.pids().items()}
        rss_end["driver"] = rss_mib(os.getpid())
        stop.set()
        await asyncio.wait_for(asyncio.gather(*load), 120)
    finally:
        await cluster.close()
        valkey.stop()
    memory = {name: {"start_mib": rss_start.get(name), "end_mib": rss_end.get(name),
                     "growth_mib": round(rss_end[name] - rss_start[name], 1)
                     if rss_start.get(name) and rss_end.get(name) else None}
              for name in sorted(set(rss_start) | set(rss_end))}
    return {"duration_s": round(elapsed, 1), "editors": editors, "max_tokens": max_tokens,
            "requests": dict(stats["outcomes"]), "tokens_received": stats["tokens_received"],
            "tokens_lost": stats["tokens_lost"], "faults": faults, "memory_rss": memory,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "engine": "paced test engine (5 ms/token, deterministic text), real ReplicaServer processes",
            "note": "memory growth of a process replaced during the run is measured only while it lived"}


def markdown(r: dict) -> str:
    lines = [f"# Soak run with injected faults ({r['duration_s']} s)", "",
             f"{r['editors']} simulated editors typing and requesting {r['max_tokens']}-token completions through "
             "`flint.client` (automatic resume and retries) against 3 front-end worker processes on one port and 2 "
             f"engine replica processes; engine: {r['engine']}. Machine: {r['machine']['cpus']} CPUs, "
             f"Python {r['machine']['python']}.", "",
             "| requests | count |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in sorted(r["requests"].items())]
    lines += ["", f"Tokens received: {r['tokens_received']}; **tokens lost: {r['tokens_lost']}**.", "",
              "| fault at | kind | process | replacement |", "| --- | --- | --- | --- |"]
    lines += [f"| {f['t_s']} s | {f['fault']} | {f['process']} | {f['replacement']} |" for f in r["faults"]]
    lines += ["", "| process | RSS start (MiB) | RSS end (MiB) | growth (MiB) |", "| --- | --- | --- | --- |"]
    for name, m in r["memory_rss"].items():
        lines.append(f"| {name} | {_fmt(m['start_mib'])} | {_fmt(m['end_mib'])} | {_fmt(m['growth_mib'])} |")
    lines += ["", f"Note: {r['note']}. Processes without a start value were started during the run.", ""]
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--editors", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=20)
    parser.add_argument("--out", default="loadtests/results")
    args = parser.parse_args()
    result = asyncio.run(soak(args.duration_s, args.editors, args.max_tokens))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "soak.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["tokens_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
