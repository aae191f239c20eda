"""Paired: per sample D (direct) and one Complete per worker tree, shuffled; engine timings per path.
usage: multi.py SAMPLES name=tree ..."""
import asyncio, os, random, sys, time
import numpy as np, grpc
from flint.bench import cluster_measure as m, floor
from flint.internal.v1 import engine_pb2
from flint.security.internal import EngineClient, resolve_token
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc
from pf import timed

async def main(samples, trees):
    async with floor.demo_replica() as (host, url, replica):
        workers = {}
        for name, tree in trees.items():
            os.environ["PYTHONPATH"] = tree
            workers[name] = m.start_worker(url, f"m-{name}", "bench")
        try:
            stubs = {k: flint_pb2_grpc.FlintStub(grpc.aio.insecure_channel(a)) for k, (_, a) in workers.items()}
            async with grpc.aio.insecure_channel(replica) as cr:
                engine = EngineClient(cr, resolve_token())
                res = {k: [] for k in ["D", *trees]}
                for i in range(samples + 20):
                    prefix = f"def f_{os.getpid()}_{i}(x):\n    return x + {i}\n"
                    ks = list(res); random.Random(i).shuffle(ks)
                    for k in ks:
                        if k == "D":
                            call = engine.Generate(engine_pb2.GenerateRequest(request_id=f"d-{i}-{time.time_ns()}", prefix="#D\n" + prefix,
                                       cache_namespace="bench-direct", sampling=engine_pb2.SamplingParams(max_tokens=1)))
                        else:
                            call = stubs[k].Complete(pb.CompleteRequest(prefix="#" + k + "\n" + prefix, sampling=pb.Sampling(max_tokens=1)))
                        row = await timed(call, k != "D")
                        if i >= 20:
                            res[k].append(row)
                d = np.array(res["D"])
                print(f"load {os.getloadavg()[0]:.2f}")
                for k, v in res.items():
                    a = np.array(v)
                    print(f"{k:8s} ttft {np.median(a[:,0]):.3f} (-D p50 {np.median(a[:,0]-d[:,0]):+.3f})  queue {np.median(a[:,1]):.3f}  "
                          f"prefill {np.median(a[:,2]):.3f} (-D {np.median(a[:,2]-d[:,2]):+.3f})  first_token {np.median(a[:,3]):.3f}", flush=True)
        finally:
            for p, _ in workers.values():
                p.terminate(); p.wait(15)
args = dict(a.split("=", 1) for a in sys.argv[2:])
asyncio.run(main(int(sys.argv[1]), args))
