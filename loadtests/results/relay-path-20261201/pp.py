"""Paired A/B of two worker trees against the stand-in engine (PacedEngine, flat out) in this process.
usage: pp.py SAMPLES ROUNDS TREE_A TREE_B [max_tokens]"""
import asyncio, os, random, sys, time
import numpy as np, grpc
from flint.bench import cluster_measure as m
from flint.bench.relay import PacedEngine
from flint.config import ReplicaConfig
from flint.replica.server import ReplicaServer
from flint.security.internal import ensure_process_token
from flint.valkey import EmbeddedValkey
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc

def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

async def main(samples, rounds, trees, max_tokens):
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    rep = ReplicaServer(PacedEngine(0.0), ReplicaConfig(redis_url=url, key_prefix="pp"))
    await rep.start()
    workers = {}
    try:
        for name, tree in trees.items():
            os.environ["PYTHONPATH"] = tree
            workers[name] = m.start_worker(url, f"pp-{name}", "pp")
        stubs = {k: flint_pb2_grpc.FlintStub(grpc.aio.insecure_channel(a)) for k, (_, a) in workers.items()}
        allb = []
        for r in range(rounds + 1):
            res = {"A": [], "B": []}
            cpu0 = {k: cpu_s(p.pid) for k, (p, _) in workers.items()}
            n = 50 if r == 0 else samples
            for i in range(n):
                ks = ["A", "B"]; random.Random(i * 7 + r).shuffle(ks)
                for k in ks:
                    res[k].append(await m._first_output_s(stubs[k].Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=max_tokens)))))
            cpu = {k: (cpu_s(p.pid) - cpu0[k]) / n * 1e6 for k, (p, _) in workers.items()}
            if r == 0: continue
            a, b = (np.array(res[k]) * 1e3 for k in "AB")
            allb.append(np.median(b - a))
            print(f"r{r} load {os.getloadavg()[0]:.2f} A p50 {np.median(a):.3f} B p50 {np.median(b):.3f} "
                  f"B-A p50 {np.median(b-a):+.3f} mean {np.mean(b-a):+.3f}  cpu A {cpu['A']:.0f} B {cpu['B']:.0f}", flush=True)
        print("median of rounds B-A", np.median(allb))
    finally:
        for p, _ in workers.values():
            p.terminate(); p.wait(15)
        await rep.stop(0); valkey.stop()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), {"A": sys.argv[3], "B": sys.argv[4]}, int(sys.argv[5]) if len(sys.argv) > 5 else 1))
