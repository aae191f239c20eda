"""A/B of two worker code trees (PYTHONPATH per worker), link transport. usage: abv.py SAMPLES ROUNDS TREE_A TREE_B OUT"""
import asyncio, json, os, sys, time
from flint.bench import bare_proxy, cluster_measure as m, floor

def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

async def main(samples, rounds, trees, out_path):
    async with floor.demo_replica() as (host, url, replica):
        workers = {}
        for name, tree in trees.items():
            os.environ["PYTHONPATH"] = tree
            workers[name] = m.start_worker(url, f"bench-{name}", "bench")
        pproc, proxy = bare_proxy.start(replica)
        try:
            for t, (_, address) in workers.items():
                await m.relay_overhead(address, replica, samples=30, bare_proxy=proxy, shuffle=True, prompt_tag=f"w{t}")
            for r in range(rounds):
                order = list(trees) if r % 2 == 0 else list(trees)[::-1]
                for t in order:
                    proc, address = workers[t]
                    load0, t0, cpu0 = os.getloadavg()[0], time.time(), cpu_s(proc.pid)
                    out = await m.relay_overhead(address, replica, samples=samples, bare_proxy=proxy, shuffle=True,
                                                 prompt_tag=f"{os.getpid()}r{r}{t}_")
                    rec = {"round": r + 1, "tree": t, "load_1m": round(load0, 2),
                           "cpu": round((cpu_s(proc.pid) - cpu0) / samples * 1e6), **out}
                    with open(out_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(f"r{r+1} {t} load {rec['load_1m']} direct {out['ttft_direct_ms']['p50']:6.3f} "
                          f"added p50 {out['added_ttft_ms']['p50']:6.3f} p99 {out['added_ttft_ms']['p99']:6.3f} "
                          f"bare {out['bare_grpc_proxy_added_ttft_ms']['p50']:6.3f} "
                          f"over-bare {out['flint_over_bare_proxy_ms']['p50']:6.3f} cpu {rec['cpu']}", flush=True)
        finally:
            for p in (*(w[0] for w in workers.values()), pproc):
                p.terminate(); p.wait(15)

a, b = sys.argv[3], sys.argv[4]
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), {"A": a, "B": b}, sys.argv[5]))
