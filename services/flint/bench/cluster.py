"""`flint bench cluster`: what distribution costs, beside the DESIGN.md budgets.

Writes loadtests/results/distributed.json and distributed.md. Starts what it
measures: a local multi-node Ray cluster (`flint.cluster.local`, unless
`--ray-address` is given) for the shard workers, an embedded Valkey, one
engine replica and front-end worker processes for the interrupt and relay
figures, a stand-in engine for the relay throughput, and a replica process
that is SIGSTOPped for the frozen-replica figure. Everything is stopped at
the end. The machine's load average is recorded before and after: on a
shared machine the figures move with it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

LAYOUTS = [("1 shard (remote worker)", 1, 1), ("2 shards PP", 2, 1), ("2 shards TP", 1, 2),
           ("4 shards PP x TP", 2, 2)]
BUDGET_STEP_OVERHEAD_MS = 0.3      # DESIGN.md: host overhead per decode step at batch 1
BUDGET_INTERRUPT_P99_MS = 10.0
BUDGET_RELAY_ADDED_P50_MS = 1.0
BUDGET_RELAY_DELTAS_S = 20_000     # engine deltas (tokens) per second per front-end worker process
BUDGET_FROZEN_DETECT_S = 3.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flint bench cluster", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="", help="checkpoint directory; default: the demo checkpoint")
    p.add_argument("--ray-address", default="", help="use this Ray cluster instead of a local 3-node one")
    p.add_argument("--out-dir", default="loadtests/results", help="where the JSON and Markdown results go")
    p.add_argument("--decode-steps", type=int, default=64, help="decode steps timed per configuration (default 64)")
    p.add_argument("--interrupts", type=int, default=200, help="interrupts sent to time interrupt-to-stop (default 200)")
    p.add_argument("--relay-samples", type=int, default=200, help="token-relay latency samples (default 200)")
    p.add_argument("--relay-seconds", type=float, default=5.0, help="seconds of relay throughput measurement (default 5)")
    p.add_argument("--frozen-samples", type=int, default=3, help="SIGSTOPs of a replica mid-stream (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke sizes (not figures to quote)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.quick:
        args.decode_steps, args.interrupts, args.relay_samples, args.relay_seconds = 8, 10, 5, 1.0
        args.frozen_samples = 1
    from flint.engine.demo import ensure_demo_checkpoint

    checkpoint = str(Path(args.model).expanduser()) if args.model else str(ensure_demo_checkpoint())
    started = time.monotonic()
    from flint.bench.engine_measure import machine

    result = {"quick": args.quick, "model": _model_info(checkpoint), "machine": machine(),
              "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    result["step_overhead"] = _with_ray(args.ray_address, lambda: _step(checkpoint, args.decode_steps))
    result.update(asyncio.run(_serving(checkpoint, args)))
    detect = result["frozen_replica"]["detect_s"]
    result["frozen_replica_detect_s"] = max(detect) if detect else None
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    result["budgets"] = budgets(result)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(out / "distributed.md", result)
    print(f"wrote {out / 'distributed.json'} and {out / 'distributed.md'}")
    return 0


def say(text: str) -> None:
    print(f"[bench cluster] {text}", file=sys.stderr, flush=True)


def _step(checkpoint: str, decode_steps: int) -> dict:
    from flint.bench.cluster_measure import step_overhead

    say("per-step overhead of 1/2/4 shards...")
    return step_overhead(checkpoint, decode_steps=decode_steps, layouts=LAYOUTS)


def _with_ray(address: str, fn):
    import ray

    from flint.cluster.local import LocalCluster, LocalClusterConfig

    cluster = None
    if not address:
        import tempfile

        cluster = LocalCluster(LocalClusterConfig(workers=2, shards_per_node=2,
                                                  state_dir=tempfile.mkdtemp(prefix="flint-bench-cluster-")))
        address = cluster.start().address
    ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    try:
        return fn()
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.stop()


async def _serving(checkpoint: str, args) -> dict:
    from flint.bench import bare_proxy, cluster_measure as m
    from flint.bench import relay
    from flint.config import ReplicaConfig
    from flint.engine.config import EngineConfig
    from flint.replica.host import ReplicaHost
    from flint.replica.server import ReplicaServer
    from flint.security.internal import ensure_process_token
    from flint.valkey import EmbeddedValkey

    ensure_process_token()  # replicas here and the worker processes share this run's internal API token
    valkey = EmbeddedValkey()
    redis_url = valkey.start()
    procs, host, stand_in = [], None, None
    try:
        host = ReplicaHost(EngineConfig.from_dict({"model": checkpoint, "kv_cache_bytes": 1 << 26}),
                           ReplicaConfig(redis_url=redis_url, key_prefix="bench"))
        replica_address = await host.start()
        stand_in = ReplicaServer(relay.PacedEngine(0.0), ReplicaConfig(redis_url=redis_url, key_prefix="bench-emitter"))
        await stand_in.start()
        for worker_id, prefix in (("bench-a", "bench"), ("bench-b", "bench"), ("bench-relay", "bench-emitter")):
            procs.append(m.start_worker(redis_url, worker_id, prefix))
        (_, a), (_, b), (relay_proc, relay_worker) = procs
        out = {}
        say(f"cross-worker interrupt ({args.interrupts})...")
        out["cross_worker_interrupt"] = await asyncio.wait_for(
            m.interrupt_latency(a, b, samples=args.interrupts), 1200)
        say(f"relay overhead ({args.relay_samples})...")
        proxy_proc, proxy = bare_proxy.start(replica_address)
        procs.append((proxy_proc, proxy))
        out["relay_overhead"] = await asyncio.wait_for(
            m.relay_overhead(a, replica_address, samples=args.relay_samples, bare_proxy=proxy), 600)
        say("relay throughput...")
        out["relay_throughput"] = await asyncio.wait_for(relay.throughput(
            relay_worker, relay_proc.pid, streams=8, seconds=args.relay_seconds, tokens=2000), args.relay_seconds + 120)
        say(f"frozen replica ({args.frozen_samples})...")
        out["frozen_replica"] = await asyncio.wait_for(
            m.frozen_replica(checkpoint, redis_url, samples=args.frozen_samples), 600)
        return out
    finally:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(15)
        if stand_in is not None:
            await stand_in.stop(0)
        if host is not None:
            await host.stop(0)
        valkey.stop()


def _floor_line(relay: dict) -> str:
    floor = relay.get("bare_grpc_proxy_added_ttft_ms")
    if not floor:
        return ""
    own = relay["flint_over_bare_proxy_ms"]
    return ("\n- The floor under that: the same requests through a bare grpc.aio proxy (`flint.bench.bare_proxy`: "
            "a process with no flint code that forwards the request bytes to the replica's Generate over one "
            "channel and streams the replies back unparsed, so the same two Python gRPC hops and loopback round "
            f"trips, alternating with the others) added p50 {floor['p50']} ms, p99 {floor['p99']} ms over the "
            f"direct call; the worker added p50 {own['p50']} ms, p99 {own['p99']} ms over the proxy (per-sample "
            "differences). The first figure is grpc-core's, asyncio's and the kernel loopback's; the second is "
            "flint's own code (auth, admission, routing, the owner, the outbox, rendering); where it goes, from time "
            "stamps along the worker's path: loadtests/results/relay-ttft-20261130/README.md.")


def _model_info(checkpoint: str) -> dict:
    from flint.engine.loader import load_config

    c = load_config(checkpoint)
    return {"path": checkpoint, "layers": c.num_layers, "hidden": c.hidden_size, "heads": c.num_heads,
            "kv_heads": c.num_kv_heads, "vocab": c.vocab_size}


def budgets(r: dict) -> dict:
    step = r["step_overhead"]
    worst = max(v["overhead_ms"] for k, v in step.items() if v["shards"] > 1 or "remote" in k)
    intr = r["cross_worker_interrupt"]
    added, thr, frozen = r["relay_overhead"]["added_ttft_ms"], r["relay_throughput"], r["frozen_replica"]
    detected = all(o == "UNAVAILABLE" for o in frozen["outcomes"]) and bool(frozen["outcomes"])
    return {
        "sharding_overhead_ms_per_step": {"value": worst, "budget": BUDGET_STEP_OVERHEAD_MS,
                                          "met": worst <= BUDGET_STEP_OVERHEAD_MS,
                                          "note": "largest added decode-step time over the in-process model; "
                                                  "budget = DESIGN.md host overhead per step at batch 1"},
        "cross_worker_interrupt_p99_ms": {"value": intr["to_stream_end_ms"]["p99"], "budget": BUDGET_INTERRUPT_P99_MS,
                                          "met": intr["to_stream_end_ms"]["p99"] <= BUDGET_INTERRUPT_P99_MS
                                          and intr["to_stream_end_ms"]["n"] >= 200
                                          and intr["deltas_after_ack"] == 0 and not intr["samples_stuck"],
                                          "note": "p99 of the samples that ended (at least 200); samples_stuck lists "
                                                  "streams that did not end within 30 s of the ack (not in the p99)"},
        "relay_added_ttft_p50_ms": {"value": added["p50"], "budget": BUDGET_RELAY_ADDED_P50_MS,
                                    "met": added["p50"] <= BUDGET_RELAY_ADDED_P50_MS, "note": _floor_note(r)},
        "relay_tokens_per_s_per_worker": {"value": thr["tokens_per_s_per_worker"], "budget": BUDGET_RELAY_DELTAS_S,
                                          "met": thr["tokens_per_s_per_worker"] >= BUDGET_RELAY_DELTAS_S,
                                          "note": f"wall clock, the worker at {thr['worker_cpu_fraction']:.0%} of a "
                                                  f"core; {thr['engine_deltas_per_worker_cpu_s']} per worker "
                                                  "CPU-second"},
        "frozen_replica_detect_s": {"value": r["frozen_replica_detect_s"], "budget": BUDGET_FROZEN_DETECT_S,
                                    "met": detected and (r["frozen_replica_detect_s"] or 1e9) <= BUDGET_FROZEN_DETECT_S,
                                    "note": "slowest sample; met only if every stream ended UNAVAILABLE"},
    }


def _floor_note(r: dict) -> str:
    floor = r["relay_overhead"].get("bare_grpc_proxy_added_ttft_ms")
    if not floor:
        return ""
    return (f"the same two Python gRPC hops with no flint code (bare grpc.aio proxy) add p50 {floor['p50']} ms; "
            f"flint's own share p50 {r['relay_overhead']['flint_over_bare_proxy_ms']['p50']} ms")


def write_markdown(path: Path, r: dict) -> None:
    mi, mach, b = r["model"], r["machine"], r["budgets"]
    lines = [
        "# flint distributed benchmark",
        "",
        "Written by `flint bench cluster`" + (" --quick (smoke sizes: NOT figures to quote)" if r["quick"] else "")
        + f"; run time {r['elapsed_s']:.0f} s, one run on one machine.",
        "",
        f"- Machine: {mach['cpu_model']}, {mach['cores']} cores, torch {mach['torch']}. Every process "
        "(Ray nodes, shard workers, replica, front-ends, this client) shares these cores.",
        f"- Model: {mi['layers']} layers, d={mi['hidden']}, {mi['heads']}/{mi['kv_heads']} heads, "
        f"vocab {mi['vocab']} (`{mi['path']}`).",
        "",
        "## Budgets",
        "",
        "| what | measured | budget | met |",
        "| --- | --- | --- | --- |",
    ]
    for name, v in b.items():
        lines.append(f"| {name} | {v['value']} | {v['budget']} | {'yes' if v['met'] else 'NO'} |")
    lines += ["", "## Per decode step, batch 1 (greedy)", "",
              "| layout | shards | step p50 ms | p90 ms | added vs in-process ms | same tokens |",
              "| --- | --- | --- | --- | --- | --- |"]
    for label, v in r["step_overhead"].items():
        s = v["step_ms"]
        lines.append(f"| {label} | {v['shards']} | {s['p50']} | {s['p90']} | {v['overhead_ms']} | "
                     f"{'yes' if v['tokens_equal_local'] else 'NO'} |")
    intr, relay, thr, frozen = r["cross_worker_interrupt"], r["relay_overhead"], r["relay_throughput"], r["frozen_replica"]
    added = relay["added_ttft_ms"]
    lines += [
        "",
        "Step inputs reach the shard workers by one torch.distributed (gloo) broadcast of a header and one",
        "of a packed payload per step; hidden states pass stage to stage with send/recv, TP ranks all-reduce",
        "twice per layer. No Ray call happens per step.",
        "",
        "## Front-end workers",
        "",
        f"- Cross-worker interrupt (stream on worker A, Interrupt to worker B, until A's stream ends): "
        f"p50 {intr['to_stream_end_ms']['p50']} ms, p99 {intr['to_stream_end_ms']['p99']} ms over "
        f"{intr['to_stream_end_ms']['n']}; deltas after the ack: {intr['deltas_after_ack']}; "
        f"streams that did not end within 30 s of the ack: {len(intr['samples_stuck'])}"
        + "".join(f"\n  - {s}" for s in intr["samples_stuck"]),
        f"- Relay overhead (one-token requests via a front-end and straight to the replica, alternating, "
        f"{added['n']} pairs): added TTFT p50 {added['p50']} ms, p99 {added['p99']} ms (via the front-end p50 "
        f"{relay['ttft_via_frontend_ms']['p50']} ms, direct p50 {relay['ttft_direct_ms']['p50']} ms)."
        + _floor_line(relay),
        f"- Relay throughput of one worker ({thr['streams']} streams of 2,000 one-token deltas from a stand-in "
        f"engine that emits as fast as it can): {thr['tokens_per_s_per_worker']} tokens/s "
        f"({thr['client_messages_per_s']} client messages/s after coalescing) with the worker at "
        f"{thr['worker_cpu_fraction']:.0%} of a core: {thr['worker_cpu_us_per_delta']} us of worker CPU per token, "
        f"{thr['engine_deltas_per_worker_cpu_s']} tokens per worker CPU-second.",
        f"- Frozen replica (SIGSTOP of a replica process mid-stream, until the client's stream ends): "
        + ", ".join(f"{t} s ({o})" for t, o in zip(frozen["detect_s"], frozen["outcomes"])) + ".",
        "",
        f"Load average (1/5/15 min) at the start {r['load_average_start']}, at the end {r['load_average_end']}.",
        "",
    ]
    path.write_text("\n".join(lines))
