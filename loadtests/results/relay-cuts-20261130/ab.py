"""A/B of the front-end's added TTFT: two front-end code trees side by side, the bare proxy and the direct call.

Usage (from a worktree, the other tree exported with `git archive <commit> services | tar -x -C DIR`):
  BASE_PP=DIR/services PYTHONPATH=$PWD/services [GAP_MS=5] [BASE_LOOP=asyncio NEW_LOOP=uvloop] python ab.py SAMPLES ROUNDS

One stand-in replica (flint.bench.relay.PacedEngine) in this process, an embedded Valkey, a worker
process from each tree (FLINT_EVENT_LOOP of each from BASE_LOOP / NEW_LOOP when set), and
flint.bench.bare_proxy. Each sample makes one one-token request of each kind, GAP_MS apart (default 5),
the order flipped every other sample; per round it prints p50s, per-sample paired differences and each
process's CPU (all threads, and the main thread alone) per request.
"""
import asyncio, os, sys, json, subprocess, time, statistics
from dataclasses import asdict
import grpc
from flint.bench import relay, bare_proxy
from flint.config import ReplicaConfig, FrontendConfig
from flint.replica.server import ReplicaServer
from flint.valkey import EmbeddedValkey
from flint.security.internal import ensure_process_token, EngineClient, resolve_token
from flint.internal.v1 import engine_pb2
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc

GAP_S = float(os.environ.get("GAP_MS", "5")) / 1000
def main_cpu(pid):
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def start_worker(url, wid, prefix, pythonpath):
    cfg = FrontendConfig(redis_url=url, worker_id=wid, port=0, reuse_port=False, key_prefix=prefix)
    env = dict(os.environ, PYTHONPATH=pythonpath)
    loop = os.environ.get("BASE_LOOP" if wid == "base" else "NEW_LOOP")   # FLINT_EVENT_LOOP of each worker
    if loop:
        env["FLINT_EVENT_LOOP"] = loop
    proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(cfg))], stdout=subprocess.PIPE, text=True, env=env)
    ready = json.loads(proc.stdout.readline() or "{}")
    return proc, f"127.0.0.1:{ready['port']}"

async def first(call):
    t0 = time.perf_counter(); f = None
    async for m in call:
        if f is None and m.WhichOneof("kind") == "delta": f = time.perf_counter() - t0
    return f

async def main(samples, rounds):
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    flat = ReplicaServer(relay.PacedEngine(0.0), ReplicaConfig(redis_url=url, key_prefix="p"))
    await flat.start()
    bproc, baddr = start_worker(url, "base", "p", os.environ["BASE_PP"])
    nproc, naddr = start_worker(url, "new", "p", os.environ["PYTHONPATH"])
    pproc, paddr = bare_proxy.start(flat.address)
    try:
      async with grpc.aio.insecure_channel(baddr) as cb, grpc.aio.insecure_channel(naddr) as cn, grpc.aio.insecure_channel(flat.address) as cr, grpc.aio.insecure_channel(paddr) as cp:
        base, new, engine, bare = flint_pb2_grpc.FlintStub(cb), flint_pb2_grpc.FlintStub(cn), EngineClient(cr, resolve_token()), bare_proxy.stub(cp)
        m0 = (main_cpu(bproc.pid), main_cpu(nproc.pid), main_cpu(pproc.pid)); t0 = time.perf_counter()
        await asyncio.sleep(5)
        m1 = (main_cpu(bproc.pid), main_cpu(nproc.pid), main_cpu(pproc.pid))
        print("idle main-thread cpu ms/s base %.1f new %.1f bare %.1f" % tuple((b - a) / (time.perf_counter() - t0) * 1e3 for a, b in zip(m0, m1)))
        for r in range(rounds + 1):
            v = {"base": [], "new": [], "bare": [], "direct": []}
            c0 = (relay.cpu_s(bproc.pid), relay.cpu_s(nproc.pid), relay.cpu_s(pproc.pid))
            m0 = (main_cpu(bproc.pid), main_cpu(nproc.pid), main_cpu(pproc.pid))
            for i in range(samples):
                order = ["base", "direct", "new", "bare"] if i % 2 else ["new", "bare", "base", "direct"]
                for k in order:
                    await asyncio.sleep(GAP_S)
                    if k in ("base", "new"):
                        v[k].append(await first((base if k == "base" else new).Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=1)))))
                    else:
                        req = engine_pb2.GenerateRequest(request_id=f"{k}-{i}-{time.time_ns()}", prefix="x", sampling=engine_pb2.SamplingParams(max_tokens=1))
                        v[k].append(await first((engine.Generate if k == "direct" else bare)(req)))
            c1 = (relay.cpu_s(bproc.pid), relay.cpu_s(nproc.pid), relay.cpu_s(pproc.pid))
            m1 = (main_cpu(bproc.pid), main_cpu(nproc.pid), main_cpu(pproc.pid))
            print("main-thread cpu us/request base %.0f new %.0f bare %.0f" % tuple((b - a) / samples * 1e6 for a, b in zip(m0, m1)))
            if r == 0: continue
            print("cpu us/request base %.0f new %.0f bare %.0f" % tuple((b - a) / samples * 1e6 for a, b in zip(c0, c1)))
            m = {k: statistics.median(x) * 1e3 for k, x in v.items()}
            pm = lambda a, b: statistics.median([x - y for x, y in zip(v[a], v[b])]) * 1e3
            print(f"  paired p50 ms: base-direct {pm('base','direct'):.3f} new-direct {pm('new','direct'):.3f} bare-direct {pm('bare','direct'):.3f} new-bare {pm('new','bare'):.3f} base-new {pm('base','new'):.3f}")
            print(f"load {os.getloadavg()[0]:.2f} | p50 ms: " + " ".join(f"{k} {x:.3f}" for k, x in m.items()) + " | added: " + " ".join(f"{k} {m[k]-m['direct']:.3f}" for k in ("base", "new", "bare")), flush=True)
    finally:
        for p in (bproc, nproc, pproc): p.terminate(); p.wait(15)
        await flat.stop(0); valkey.stop()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
