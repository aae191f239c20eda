"""Measurements of `flint bench cluster`.

- step overhead: one greedy decode step (batch 1) through `LocalRunner` (the
  model in this process) and through `DistributedRunner` with 1, 2 and 4
  shard workers; the difference is what sharding adds per step;
- cross-worker interrupt: stream on front-end worker A, `Interrupt` sent to
  worker B, time until A's stream ends;
- relay overhead: first-token time through a front-end worker minus the same
  request sent straight to the engine replica's internal gRPC, sample by
  sample (they alternate, so load swings hit both alike), and the same through
  a bare grpc.aio proxy with no flint code (flint.bench.bare_proxy): the floor
  that two Python gRPC hops put under any front-end;
- relay throughput: `flint.bench.relay.throughput` (a stand-in engine, so the
  engine's own speed does not cap what is measured);
- frozen replica: a replica in its own process is SIGSTOPped mid-stream;
  time until the client's stream ends, and how.

`python -m flint.bench.cluster_measure replica ...` runs the replica process
of the frozen-replica figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import grpc


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary_ms(values_s: list[float]) -> dict:
    ms = [v * 1e3 for v in values_s]
    return {"p50": round(pct(ms, 50), 3), "p90": round(pct(ms, 90), 3), "p99": round(pct(ms, 99), 3),
            "n": len(ms)}


# -- per-step overhead of sharding ---------------------------------------------------------------

def step_overhead(checkpoint: str, *, decode_steps: int, layouts: list[tuple[str, int, int]]) -> dict:
    import torch

    from flint.distributed.config import ShardingConfig
    from flint.distributed.probe import greedy_generate
    from flint.distributed.runner import DistributedRunner
    from flint.engine.loader import load_model
    from flint.engine.runner import LocalRunner

    torch.set_num_threads(1)   # shard workers run 1 thread each; compare like with like
    prompt = [[(i * 37 + 11) % 500 + 3 for i in range(32)]]
    slots = len(prompt[0]) + decode_steps + 8

    def run(runner) -> tuple[list[int], list[float]]:
        greedy_generate(runner, prompt, 4)                      # warm-up
        times: list[float] = []
        tokens = greedy_generate(runner, prompt, decode_steps, step_times_s=times)
        return tokens[0], times[1:]                             # decode steps only

    local = LocalRunner(load_model(checkpoint))
    local.init_kv(slots)
    ref_tokens, ref_times = run(local)
    base = statistics.median(ref_times)
    out = {"local (1 shard, in process)": {"shards": 1, "step_ms": summary_ms(ref_times), "overhead_ms": 0.0,
                                           "tokens_equal_local": True}}
    for label, pp, tp in layouts:
        with DistributedRunner(checkpoint, sharding=ShardingConfig(pp=pp, tp=tp)) as runner:
            runner.init_kv(slots)
            tokens, times = run(runner)
        out[label] = {"shards": pp * tp, "pp": pp, "tp": tp, "step_ms": summary_ms(times),
                      "overhead_ms": round((statistics.median(times) - base) * 1e3, 3),
                      "tokens_equal_local": tokens == ref_tokens}
    return out


# -- front-end workers as processes --------------------------------------------------------------

def start_worker(redis_url: str, worker_id: str, key_prefix: str, **overrides) -> tuple[subprocess.Popen, str]:
    """A front-end worker process (FrontendConfig defaults, plus `overrides` such as engine_transport)."""
    from flint.config import FrontendConfig

    cfg = FrontendConfig(redis_url=redis_url, worker_id=worker_id, port=0, reuse_port=False, key_prefix=key_prefix,
                         **overrides)
    proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(cfg))],
                            stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or "{}")
    if ready.get("event") != "listening":
        proc.kill()
        raise RuntimeError(f"front-end worker {worker_id} did not start")
    return proc, f"127.0.0.1:{ready['port']}"


# -- interrupt latency and relay overhead (real engine) -----------------------------------------

async def interrupt_latency(worker_a: str, worker_b: str, *, samples: int) -> dict:
    from flint.v1 import flint_pb2 as pb
    from flint.v1 import flint_pb2_grpc

    lat, late_deltas, stuck = [], 0, []
    async with grpc.aio.insecure_channel(worker_a) as ca, grpc.aio.insecure_channel(worker_b) as cb:
        a, b = flint_pb2_grpc.FlintStub(ca), flint_pb2_grpc.FlintStub(cb)
        for i in range(samples):
            rid = f"bench-int-{i}-{time.time_ns()}"
            # Sampled (seeded): the random demo model's greedy output is mostly special tokens, no text.
            call = a.Edit(pb.EditRequest(request_id=rid, code="x = 1\ny = 2\n", instruction="rename x",
                                         sampling=pb.Sampling(max_tokens=400, temperature=1.0, seed=i + 1)))
            phase, ack = "first delta", None
            try:
                first = await asyncio.wait_for(call.read(), 30)
                while first is not grpc.aio.EOF and first.WhichOneof("kind") != "delta":
                    first = await asyncio.wait_for(call.read(), 30)
                if first is grpc.aio.EOF:
                    continue                                    # ended before any text: no sample
                t0 = time.perf_counter()
                phase = "interrupt ack"
                ack = await b.Interrupt(pb.InterruptRequest(request_id=rid), timeout=30)
                phase = "stream end"
                while (m := await asyncio.wait_for(call.read(), 30)) is not grpc.aio.EOF:
                    if m.WhichOneof("kind") == "delta" and m.delta.seq > ack.last_seq:
                        late_deltas += 1
                lat.append(time.perf_counter() - t0)
            except (asyncio.TimeoutError, grpc.aio.AioRpcError) as exc:
                acked = f", ack was_running={ack.was_running} last_seq={ack.last_seq}" if ack else ""
                stuck.append(f"{rid}: no {phase} within 30 s ({exc.__class__.__name__}{acked})")
                call.cancel()
    return {"to_stream_end_ms": summary_ms(lat), "deltas_after_ack": late_deltas, "samples_stuck": stuck}


async def relay_overhead(worker: str, replica: str, *, samples: int, bare_proxy: str = "",
                         shuffle: bool = False, prompt_tag: str = "") -> dict:
    """TTFT via the worker, straight to the replica, and (with `bare_proxy`, flint.bench.bare_proxy) via a
    grpc.aio proxy with no flint code, alternating sample by sample; the added figures are per-sample
    differences from the direct call. The calls of a sample go in that order, or (`shuffle`) in an order
    shuffled every sample, so no call always follows the same other call (whose tail work it would meet).
    `prompt_tag` goes into every prompt: a run of several rounds gives each its own, else a round's prompts hit
    the prefix cache the round before filled (measured: ~1.2-1.6 ms less TTFT with the demo model)."""
    import random

    from flint.bench import bare_proxy as bare
    from flint.internal.v1 import engine_pb2
    from flint.security.internal import EngineClient, resolve_token
    from flint.v1 import flint_pb2 as pb
    from flint.v1 import flint_pb2_grpc

    via, direct, proxied = [], [], []
    async with grpc.aio.insecure_channel(worker) as cw, grpc.aio.insecure_channel(replica) as cr, \
            grpc.aio.insecure_channel(bare_proxy or replica) as cp:
        front, engine, proxy = flint_pb2_grpc.FlintStub(cw), EngineClient(cr, resolve_token()), bare.stub(cp)
        for i in range(samples):
            # Distinct prompts, and the direct and proxied calls in prefix-cache namespaces of their own: no call
            # gets prefill help from another (the front-end's calls carry the tenant's namespace, "" here).
            prefix = f"def f_{prompt_tag}{i}(x):\n    return x + {i}\n"
            calls = [(via, lambda: front.Complete(pb.CompleteRequest(prefix=prefix,
                                                                     sampling=pb.Sampling(max_tokens=1)))),
                     (direct, lambda: engine.Generate(engine_pb2.GenerateRequest(
                         request_id=f"bench-direct-{i}-{time.time_ns()}", prefix=prefix,
                         cache_namespace="bench-direct", sampling=engine_pb2.SamplingParams(max_tokens=1))))]
            if bare_proxy:
                calls.append((proxied, lambda: proxy(engine_pb2.GenerateRequest(
                    request_id=f"bench-bare-{i}-{time.time_ns()}", prefix=prefix, cache_namespace="bench-bare",
                    sampling=engine_pb2.SamplingParams(max_tokens=1)))))
            if shuffle:
                random.Random(i).shuffle(calls)
            for out, call in calls:
                out.append(await _first_output_s(call()))
    out = {"ttft_via_frontend_ms": summary_ms(via), "ttft_direct_ms": summary_ms(direct),
           "added_ttft_ms": summary_ms([v - d for v, d in zip(via, direct)])}
    if proxied:
        out["ttft_bare_grpc_proxy_ms"] = summary_ms(proxied)
        out["bare_grpc_proxy_added_ttft_ms"] = summary_ms([p - d for p, d in zip(proxied, direct)])
        out["flint_over_bare_proxy_ms"] = summary_ms([v - p for v, p in zip(via, proxied)])
    return out


async def _first_output_s(call) -> float:
    """Seconds from the call's start to its first delta or final; the stream is then read to its end (a call
    left unread keeps its HTTP/2 stream open, and a worker allows 64 per connection)."""
    t0, first = time.perf_counter(), None
    async for m in call:
        if first is None and m.WhichOneof("kind") in ("delta", "final"):
            first = time.perf_counter() - t0
    return first


# -- a frozen replica (SIGSTOP) ------------------------------------------------------------------

def start_replica_process(checkpoint: str, redis_url: str, key_prefix: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "flint.bench.cluster_measure", "replica", "--checkpoint",
                             checkpoint, "--redis-url", redis_url, "--key-prefix", key_prefix],
                            stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or "{}")
    if "address" not in ready:
        proc.kill()
        raise RuntimeError("the frozen-replica bench's replica process did not start")
    return proc, ready["address"]


async def frozen_replica(checkpoint: str, redis_url: str, *, samples: int, limit_s: float = 45.0) -> dict:
    """SIGSTOP a replica process while a client streams from it through a front-end worker; seconds until the
    client's stream ends (and its status). The replica is resumed (SIGCONT) between samples."""
    from flint.v1 import flint_pb2 as pb
    from flint.v1 import flint_pb2_grpc

    replica, _ = start_replica_process(checkpoint, redis_url, "bench-frozen")
    worker, address = start_worker(redis_url, "bench-frozen", "bench-frozen")
    detect, outcomes = [], []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = flint_pb2_grpc.FlintStub(channel)
            for i in range(samples):
                await _until_served(stub)
                call = stub.Complete(pb.CompleteRequest(prefix=f"def f{i}(x):", sampling=pb.Sampling(
                    max_tokens=4000, temperature=1.0, seed=i + 1)))
                while (m := await asyncio.wait_for(call.read(), 30)) is not grpc.aio.EOF:
                    if m.WhichOneof("kind") == "delta":
                        break
                os.kill(replica.pid, signal.SIGSTOP)
                t0 = time.perf_counter()
                try:
                    while await asyncio.wait_for(call.read(), limit_s) is not grpc.aio.EOF:
                        pass
                    outcome = "ended with no error"
                except grpc.aio.AioRpcError as err:
                    outcome = err.code().name
                except asyncio.TimeoutError:
                    outcome = f"still open after {limit_s:g} s"
                    call.cancel()
                detect.append(time.perf_counter() - t0)
                outcomes.append(outcome)
                os.kill(replica.pid, signal.SIGCONT)
                if outcome.startswith("still open"):
                    break        # undetected: more samples would only repeat the limit
    finally:
        os.kill(replica.pid, signal.SIGCONT)
        for proc in (worker, replica):
            proc.terminate()
            proc.wait(15)
    return {"detect_s": [round(t, 3) for t in detect], "outcomes": outcomes, "limit_s": limit_s}


async def _until_served(stub, timeout_s: float = 60.0) -> None:
    """Wait until a short request completes (the replica is back in routing after the last sample)."""
    from flint.v1 import flint_pb2 as pb

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            async for _ in stub.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=1)),
                                         timeout=10):
                pass
            return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


def replica_main(argv: list[str]) -> int:
    """A replica process (`ReplicaHost`, real engine) until SIGTERM; prints {"address": ...} once serving."""
    import argparse

    from flint.config import ReplicaConfig
    from flint.engine.config import EngineConfig
    from flint.replica.host import ReplicaHost

    p = argparse.ArgumentParser(prog="python -m flint.bench.cluster_measure replica")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--key-prefix", required=True)
    args = p.parse_args(argv)

    async def run() -> None:
        host = ReplicaHost(EngineConfig.from_dict({"model": args.checkpoint, "kv_cache_bytes": 1 << 26}),
                           ReplicaConfig(redis_url=args.redis_url, key_prefix=args.key_prefix))
        print(json.dumps({"address": await host.start()}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await host.stop(0)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["replica"]:
        sys.exit("usage: python -m flint.bench.cluster_measure replica --checkpoint C --redis-url U --key-prefix P")
    sys.exit(replica_main(sys.argv[2:]))
