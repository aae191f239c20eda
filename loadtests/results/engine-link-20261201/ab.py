"""Relay-added TTFT with the engine link against the gRPC hop, in the same run: one front-end worker process per
transport (`engine_transport` "link" / "grpc"), the same demo replica (a ReplicaHost in this process, as
flint.bench.floor.demo_replica and `flint bench cluster` set it up) and bare proxy; rounds of
flint.bench.cluster_measure.relay_overhead (the bench's relay part: worker, direct, bare proxy per sample, shuffled)
alternate between the two workers, which goes first alternating too; every round has prompts of its own.
Worker CPU per request: the worker process's user+system time over the round / samples (10 ms ticks).

usage: ab.py SAMPLES ROUNDS OUT.jsonl"""
import asyncio, json, os, sys, time
from flint.bench import bare_proxy, cluster_measure as m, floor


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(samples, rounds, out_path):
    async with floor.demo_replica() as (host, url, replica):
        workers = {t: m.start_worker(url, f"bench-{t}", "bench", engine_transport=t) for t in ("link", "grpc")}
        pproc, proxy = bare_proxy.start(replica)
        try:
            for t, (_, address) in workers.items():   # warm-up, not recorded (connections, caches)
                await m.relay_overhead(address, replica, samples=20, bare_proxy=proxy, shuffle=True, prompt_tag=f"w{t}")
            for r in range(rounds):
                order = ("link", "grpc") if r % 2 == 0 else ("grpc", "link")
                for t in order:
                    proc, address = workers[t]
                    load0, t0, cpu0 = os.getloadavg()[0], time.time(), cpu_s(proc.pid)
                    out = await m.relay_overhead(address, replica, samples=samples, bare_proxy=proxy, shuffle=True,
                                                 prompt_tag=f"{os.getpid()}r{r}{t}_")
                    rec = {"round": r + 1, "transport": t, "utc": time.strftime("%H:%M:%S", time.gmtime(t0)),
                           "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
                           "worker_cpu_us_per_request": round((cpu_s(proc.pid) - cpu0) / samples * 1e6), **out}
                    with open(out_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    print(f"round {r+1} {t:4s} load {rec['load_1m']} direct p50 {out['ttft_direct_ms']['p50']:6.3f}  "
                          f"added p50 {out['added_ttft_ms']['p50']:6.3f} p99 {out['added_ttft_ms']['p99']:6.3f}  "
                          f"bare p50 {out['bare_grpc_proxy_added_ttft_ms']['p50']:6.3f}  "
                          f"flint-over-bare p50 {out['flint_over_bare_proxy_ms']['p50']:6.3f}  "
                          f"worker cpu {rec['worker_cpu_us_per_request']} us/req", flush=True)
        finally:
            for p in (*(w[0] for w in workers.values()), pproc):
                p.terminate()
                p.wait(15)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
