"""Real-model TTFT, engine timings: the worker of BASE_PP (another code tree) against this tree's, direct, bare proxy."""
import asyncio, os, sys, time, statistics
import grpc
from flint.bench import cluster_measure as m, bare_proxy
from flint.config import ReplicaConfig
from flint.engine.config import EngineConfig
from flint.engine.demo import ensure_demo_checkpoint
from flint.replica.host import ReplicaHost
from flint.security.internal import ensure_process_token, EngineClient, resolve_token
from flint.valkey import EmbeddedValkey
from flint.internal.v1 import engine_pb2
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc

async def run(call):
    t0 = time.perf_counter(); first = None; fin = None
    async for msg in call:
        k = msg.WhichOneof("kind")
        if first is None and k in ("delta", "final"): first = time.perf_counter() - t0
        if k == "final": fin = msg.final
    t = fin.timings if hasattr(fin, "timings") else fin
    return first * 1e3, t.queue_ms, t.prefill_ms, t.first_token_ms

async def main(samples):
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    host = ReplicaHost(EngineConfig.from_dict({"model": str(ensure_demo_checkpoint()), "kv_cache_bytes": 1 << 26}), ReplicaConfig(redis_url=url, key_prefix="bench"))
    addr = await host.start()
    import json, subprocess
    from dataclasses import asdict
    from flint.config import FrontendConfig
    def start(wid, pp):
        cfg = FrontendConfig(redis_url=url, worker_id=wid, port=0, reuse_port=False, key_prefix="bench")
        proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(cfg))], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=pp))
        return proc, f"127.0.0.1:{json.loads(proc.stdout.readline())['port']}"
    wproc, w = start("new", os.environ["PYTHONPATH"])
    w2proc, w2 = start("base", os.environ["BASE_PP"])
    pproc, p = bare_proxy.start(addr)
    res = {"via_new": [], "via_base": [], "direct": [], "bare": []}
    try:
        async with grpc.aio.insecure_channel(w) as cw, grpc.aio.insecure_channel(addr) as cr, grpc.aio.insecure_channel(p) as cp, grpc.aio.insecure_channel(w2) as cw2:
            front2 = flint_pb2_grpc.FlintStub(cw2)
            front, engine, proxy = flint_pb2_grpc.FlintStub(cw), EngineClient(cr, resolve_token()), bare_proxy.stub(cp)
            for i in range(samples):
                prefix = f"def f_{i}(x):\n    return x + {i}\n"
                a, b = (front, front2) if i % 2 else (front2, front)
                for f in (a, b):
                    res["via_new" if f is front else "via_base"].append(await run(f.Complete(pb.CompleteRequest(prefix=prefix if f is front else prefix.replace("def f_", "def g_"), sampling=pb.Sampling(max_tokens=1)))))
                res["direct"].append(await run(engine.Generate(engine_pb2.GenerateRequest(request_id=f"d-{i}-{time.time_ns()}", prefix=prefix, cache_namespace="bench-direct", sampling=engine_pb2.SamplingParams(max_tokens=1)))))
                res["bare"].append(await run(proxy(engine_pb2.GenerateRequest(request_id=f"b-{i}-{time.time_ns()}", prefix=prefix, cache_namespace="bench-bare", sampling=engine_pb2.SamplingParams(max_tokens=1)))))
        print("load", os.getloadavg())
        for k, rows in res.items():
            cols = list(zip(*rows))
            print(k, " ".join(f"{n} {statistics.median(c):.3f}" for n, c in zip(("ttft", "queue", "prefill", "first_token"), cols)))
    finally:
        for proc in (wproc, pproc, w2proc): proc.terminate(); proc.wait(15)
        await host.stop(0); valkey.stop()
asyncio.run(main(int(sys.argv[1])))
