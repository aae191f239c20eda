"""Real-model (demo checkpoint) one-token TTFT, same run, alternating: this tree's worker, BASE_PP's worker, the
direct call and the bare grpc.aio proxy. Per round: p50 of per-sample paired differences, engine timings, and
each worker's main-thread CPU per request. Usage: BASE_PP=DIR/services PYTHONPATH=$PWD/services python realab2.py N ROUNDS"""
import asyncio, os, sys, time, statistics, json, subprocess
from dataclasses import asdict
import grpc
from flint.bench import bare_proxy
from flint.config import ReplicaConfig, FrontendConfig
from flint.engine.config import EngineConfig
from flint.engine.demo import ensure_demo_checkpoint
from flint.replica.host import ReplicaHost
from flint.security.internal import ensure_process_token, EngineClient, resolve_token
from flint.valkey import EmbeddedValkey
from flint.internal.v1 import engine_pb2
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc

def main_cpu(pid):
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")

async def run(call):
    t0 = time.perf_counter(); first = None; fin = None
    async for msg in call:
        k = msg.WhichOneof("kind")
        if first is None and k in ("delta", "final"): first = time.perf_counter() - t0
        if k == "final": fin = msg.final
    t = fin.timings if hasattr(fin, "timings") else fin
    return first * 1e3, t.queue_ms, t.prefill_ms

async def main(samples, rounds):
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    host = ReplicaHost(EngineConfig.from_dict({"model": str(ensure_demo_checkpoint()), "kv_cache_bytes": 1 << 26}), ReplicaConfig(redis_url=url, key_prefix="bench"))
    addr = await host.start()
    def start(wid, pp):
        cfg = FrontendConfig(redis_url=url, worker_id=wid, port=0, reuse_port=False, key_prefix="bench")
        proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(cfg))], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=pp))
        return proc, f"127.0.0.1:{json.loads(proc.stdout.readline())['port']}"
    nproc, n = start("new", os.environ["PYTHONPATH"])
    bproc, b = start("base", os.environ["BASE_PP"])
    pproc, p = bare_proxy.start(addr)
    print(f"model {ensure_demo_checkpoint()}; lscpu CPUs {os.cpu_count()}")
    try:
        async with grpc.aio.insecure_channel(n) as cn, grpc.aio.insecure_channel(addr) as cr, grpc.aio.insecure_channel(p) as cp, grpc.aio.insecure_channel(b) as cb:
            new, base, engine, proxy = flint_pb2_grpc.FlintStub(cn), flint_pb2_grpc.FlintStub(cb), EngineClient(cr, resolve_token()), bare_proxy.stub(cp)
            legs = {
                "new": lambda i: new.Complete(pb.CompleteRequest(prefix=f"def n_{i}(x):\n    return x + {i}\n", sampling=pb.Sampling(max_tokens=1))),
                "base": lambda i: base.Complete(pb.CompleteRequest(prefix=f"def b_{i}(x):\n    return x + {i}\n", sampling=pb.Sampling(max_tokens=1))),
                "direct": lambda i: engine.Generate(engine_pb2.GenerateRequest(request_id=f"d-{i}-{time.time_ns()}", prefix=f"def d_{i}(x):\n    return x + {i}\n", cache_namespace="bench-direct", sampling=engine_pb2.SamplingParams(max_tokens=1))),
                "bare": lambda i: proxy(engine_pb2.GenerateRequest(request_id=f"p-{i}-{time.time_ns()}", prefix=f"def p_{i}(x):\n    return x + {i}\n", cache_namespace="bench-bare", sampling=engine_pb2.SamplingParams(max_tokens=1))),
            }
            for i in range(20):
                for leg in legs.values(): await run(leg(10**6 + i))
            for r in range(rounds):
                res = {k: [] for k in legs}
                c0 = (main_cpu(nproc.pid), main_cpu(bproc.pid), main_cpu(pproc.pid)); l0 = os.getloadavg()[0]
                for i in range(samples):
                    order = ["new", "direct", "base", "bare"] if i % 2 else ["base", "bare", "new", "direct"]
                    for k in order:
                        await asyncio.sleep(0.002)
                        res[k].append(await run(legs[k](r * samples + i)))
                c1 = (main_cpu(nproc.pid), main_cpu(bproc.pid), main_cpu(pproc.pid))
                pm = lambda a, b_: statistics.median([x[0] - y[0] for x, y in zip(res[a], res[b_])])
                print(f"round {r+1}: load {l0:.2f}-{os.getloadavg()[0]:.2f}, {samples} samples")
                print("  main-thread CPU us/request new %.0f base %.0f bare %.0f" % tuple((y - x) / samples * 1e6 for x, y in zip(c0, c1)))
                print(f"  paired p50 ms: new-direct {pm('new','direct'):.3f} base-direct {pm('base','direct'):.3f} bare-direct {pm('bare','direct'):.3f} new-bare {pm('new','bare'):.3f} base-bare {pm('base','bare'):.3f} base-new {pm('base','new'):.3f}")
                for k, rows in res.items():
                    cols = list(zip(*rows))
                    print(f"  {k:6s} p50 ttft {statistics.median(cols[0]):.3f} queue {statistics.median(cols[1]):.3f} prefill {statistics.median(cols[2]):.3f} | p99 ttft {sorted(cols[0])[int(0.99*len(cols[0]))-1]:.3f}", flush=True)
    finally:
        for proc in (nproc, bproc, pproc): proc.terminate(); proc.wait(15)
        await host.stop(0); valkey.stop()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
