"""`python -m flint.bench.relay`: the front-end token path alone, with CPU per delta.

Why a separate mode: `flint bench cluster` measures the relay beside a real
model, whose steps share the cores with everything else; here a stand-in
engine (`PacedEngine`, in this process) emits deltas, so what is measured is
the front-end worker (its own process) and the replica's Generate stream.
On a shared machine wall-clock rates swing with the load, so the figure to
compare is CPU time of the worker process per relayed engine delta (read
from /proc), next to the wall-clock rate.

- throughput: N streams of long requests, as fast as the stand-in emits;
  engine deltas/s, client messages/s, worker CPU us per delta (journal off
  and on);
- ttft: one-token requests via the worker vs straight to the replica, and
  through a bare grpc.aio proxy with no flint code (the floor of two hops);
- interrupt: a paced stream on worker A, Interrupt sent to worker B, time
  to A's stream end, and deltas with seq > the acknowledged last seq.

`relay_bench(...)` is the callable for other benches (`flint bench cluster`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import grpc

from flint.engine.types import Delta, Final, FinishReason, LoadInfo, Started


class PacedEngine:
    """Stand-in engine (benchmarks only): `max_tokens` one-token deltas, `interval_s` apart (0 = flat out)."""

    model_name = "bench-paced"
    max_context_tokens = 4096

    def __init__(self, interval_s: float = 0.0):
        self.interval_s = interval_s
        self.running = 0

    def load(self) -> LoadInfo:
        return LoadInfo(running=self.running, waiting=0, kv_used_fraction=0.0, max_context_tokens=4096)

    async def abort(self, request_id: str) -> bool:
        return False

    async def generate(self, req):
        self.running += 1
        n = req.sampling.max_tokens or 16
        try:
            yield Started(req.request_id, prompt_tokens=1)
            for seq in range(1, n + 1):
                yield Delta(req.request_id, seq, "x", 1)
                if self.interval_s:
                    await asyncio.sleep(self.interval_s)
                elif seq % 64 == 0:
                    await asyncio.sleep(0)
            yield Final(req.request_id, n + 1, FinishReason.LENGTH, 1, n)
        finally:
            self.running -= 1

    async def generate_batches(self, req):
        """As `AsyncEngine.generate_batches`: the events run ahead into a queue (a real engine's step thread does
        not wait for the stream), and each list is what was queued since the last was taken."""
        queue: asyncio.Queue = asyncio.Queue()

        async def produce() -> None:
            async for event in self.generate(req):
                queue.put_nowait(event)

        producer = asyncio.create_task(produce())
        try:
            while True:
                batch = [await queue.get()]
                while not queue.empty():
                    batch.append(queue.get_nowait())
                yield batch
                if isinstance(batch[-1], Final):
                    return
        finally:
            producer.cancel()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_worker(redis_url: str, worker_id: str, key_prefix: str, *, journal: bool) -> tuple[subprocess.Popen, str]:
    from flint.config import FrontendConfig

    cfg = FrontendConfig(redis_url=redis_url, worker_id=worker_id, port=0, reuse_port=False, key_prefix=key_prefix,
                         journal={"enabled": journal})
    proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(cfg))],
                            stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or "{}")
    if ready.get("event") != "listening":
        proc.kill()
        raise RuntimeError(f"front-end worker {worker_id} did not start")
    return proc, f"127.0.0.1:{ready['port']}"


def say(text: str) -> None:
    print(f"[bench relay] {text}", file=sys.stderr, flush=True)


def _ms(values_s: list[float]) -> dict:
    ms = sorted(v * 1e3 for v in values_s)
    if not ms:
        return {"n": 0}
    at = lambda q: ms[min(len(ms) - 1, int(round(q / 100 * (len(ms) - 1))))]  # noqa: E731
    return {"p50": round(at(50), 3), "p90": round(at(90), 3), "p99": round(at(99), 3), "n": len(ms)}


async def throughput(worker: str, pid: int, *, streams: int, seconds: float, tokens: int) -> dict:
    from flint.v1 import flint_pb2 as pb
    from flint.v1 import flint_pb2_grpc

    messages = deltas = 0
    deadline = time.perf_counter() + seconds

    async def one(stub) -> None:
        nonlocal messages, deltas
        while time.perf_counter() < deadline:
            expect = 1
            async for m in stub.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=tokens))):
                if m.WhichOneof("kind") == "delta":
                    if m.delta.seq != expect:
                        raise AssertionError(f"seq {m.delta.seq}, expected {expect}")
                    expect += 1
                    messages += 1
                    deltas += m.delta.token_count

    async with grpc.aio.insecure_channel(worker) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        c0, t0 = cpu_s(pid), time.perf_counter()
        await asyncio.gather(*(one(stub) for _ in range(streams)))
        elapsed, cpu = time.perf_counter() - t0, cpu_s(pid) - c0
    return {"engine_deltas_per_s": round(deltas / elapsed), "tokens_per_s_per_worker": round(deltas / elapsed),
            "client_messages_per_s": round(messages / elapsed),
            "worker_cpu_us_per_delta": round(cpu / max(deltas, 1) * 1e6, 1),
            "engine_deltas_per_worker_cpu_s": round(deltas / max(cpu, 1e-9)),
            "worker_cpu_fraction": round(cpu / elapsed, 2), "streams": streams, "seconds": round(elapsed, 2)}


async def ttft(worker: str, replica: str, *, samples: int, bare_proxy: str = "") -> dict:
    """One-token requests via the worker, straight to the replica and (with `bare_proxy`) through a grpc.aio
    proxy with no flint code (flint.bench.bare_proxy), alternating."""
    from flint.bench import bare_proxy as bare
    from flint.internal.v1 import engine_pb2
    from flint.security.internal import EngineClient, resolve_token
    from flint.v1 import flint_pb2 as pb
    from flint.v1 import flint_pb2_grpc

    via, direct, proxied = [], [], []
    async with grpc.aio.insecure_channel(worker) as cw, grpc.aio.insecure_channel(replica) as cr, \
            grpc.aio.insecure_channel(bare_proxy or replica) as cp:
        front, engine, proxy = flint_pb2_grpc.FlintStub(cw), EngineClient(cr, resolve_token()), bare.stub(cp)
        for i in range(samples):   # alternate, so load swings hit both sides alike
            t0 = time.perf_counter()
            async for m in front.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=1))):
                if m.WhichOneof("kind") == "delta":
                    via.append(time.perf_counter() - t0)
            for call, out in [(engine.Generate, direct), *([(proxy, proxied)] if bare_proxy else [])]:
                t0 = time.perf_counter()
                async for e in call(engine_pb2.GenerateRequest(request_id=f"bench-direct-{i}-{time.time_ns()}",
                                                               prefix="x", sampling=engine_pb2.SamplingParams(
                                                                   max_tokens=1))):
                    if e.WhichOneof("kind") == "delta":
                        out.append(time.perf_counter() - t0)
    out = {"via_frontend_ms": _ms(via), "direct_ms": _ms(direct),
           "added_p50_ms": round((statistics.median(via) - statistics.median(direct)) * 1e3, 3)}
    if proxied:
        out["bare_grpc_proxy_ms"] = _ms(proxied)
        out["bare_grpc_proxy_added_p50_ms"] = round((statistics.median(proxied) - statistics.median(direct)) * 1e3, 3)
    return out


async def interrupt(worker_a: str, worker_b: str, *, samples: int) -> dict:
    from flint.v1 import flint_pb2 as pb
    from flint.v1 import flint_pb2_grpc

    to_ack, to_end, late = [], [], 0
    async with grpc.aio.insecure_channel(worker_a) as ca, grpc.aio.insecure_channel(worker_b) as cb:
        a, b = flint_pb2_grpc.FlintStub(ca), flint_pb2_grpc.FlintStub(cb)
        for i in range(samples):
            rid = f"bench-int-{i}-{time.time_ns()}"
            call = a.Complete(pb.CompleteRequest(request_id=rid, prefix="x", sampling=pb.Sampling(max_tokens=4000)))
            while (m := await call.read()) is not grpc.aio.EOF and m.WhichOneof("kind") != "delta":
                pass
            for _ in range(5):      # a few deltas in: the stream is in full flow
                await call.read()
            t0 = time.perf_counter()
            ack = await b.Interrupt(pb.InterruptRequest(request_id=rid), timeout=30)
            to_ack.append(time.perf_counter() - t0)
            while (m := await call.read()) is not grpc.aio.EOF:
                if m.WhichOneof("kind") == "delta" and m.delta.seq > ack.last_seq:
                    late += 1
            to_end.append(time.perf_counter() - t0)
    return {"to_ack_ms": _ms(to_ack), "to_stream_end_ms": _ms(to_end), "deltas_after_ack": late}


async def relay_bench(*, streams: int = 8, seconds: float = 5.0, tokens: int = 2000, ttft_samples: int = 200,
                      interrupts: int = 100, interval_ms: float = 1.0) -> dict:
    """All figures in one run: embedded Valkey, two stand-in replicas in this process, worker processes."""
    from flint.bench import bare_proxy
    from flint.config import ReplicaConfig
    from flint.replica.server import ReplicaServer
    from flint.valkey import EmbeddedValkey

    from flint.security.internal import ensure_process_token

    ensure_process_token()  # replicas here and the worker processes share this run's internal API token
    valkey = EmbeddedValkey()
    redis_url = valkey.start()
    replicas, procs = [], []
    try:
        flat = ReplicaServer(PacedEngine(0.0), ReplicaConfig(redis_url=redis_url, key_prefix="relay-flat"))
        paced = ReplicaServer(PacedEngine(interval_ms / 1e3), ReplicaConfig(redis_url=redis_url,
                                                                            key_prefix="relay-paced"))
        for r in (flat, paced):
            await r.start()
            replicas.append(r)
        proxy_proc, proxy = bare_proxy.start(flat.address)   # the floor: the same two hops, no flint code
        procs.append(proxy_proc)
        out = {"load_average": os.getloadavg(), "cores": os.cpu_count()}
        for journal in (False, True):
            proc, addr = start_worker(redis_url, f"relay-{journal}", "relay-flat", journal=journal)
            procs.append(proc)
            key = "journal_on" if journal else "journal_off"
            say(f"throughput, {key}...")
            out[f"throughput_{key}"] = await throughput(addr, proc.pid, streams=streams, seconds=seconds,
                                                        tokens=tokens)
            say(f"ttft, {key}: {out[f'throughput_{key}']}")
            out[f"ttft_{key}"] = await ttft(addr, flat.address, samples=ttft_samples, bare_proxy=proxy)
        addrs = []
        for w in ("relay-a", "relay-b"):
            proc, addr = start_worker(redis_url, w, "relay-paced", journal=True)
            procs.append(proc)
            addrs.append(addr)
        say("interrupt...")
        out["interrupt"] = await interrupt(*addrs, samples=interrupts) if interrupts else {}
        return out
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
        for r in replicas:
            await r.stop(0)
        valkey.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flint.bench.relay", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--tokens", type=int, default=2000, help="deltas per throughput request")
    p.add_argument("--ttft-samples", type=int, default=200)
    p.add_argument("--interrupts", type=int, default=100)
    p.add_argument("--interval-ms", type=float, default=1.0, help="delta interval of the interrupt streams")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    result = asyncio.run(relay_bench(streams=args.streams, seconds=args.seconds, tokens=args.tokens,
                                     ttft_samples=args.ttft_samples, interrupts=args.interrupts,
                                     interval_ms=args.interval_ms))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
