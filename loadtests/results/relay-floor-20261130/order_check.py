"""Does the call order bias `flint bench cluster`'s relay figures? flint.bench.cluster_measure.relay_overhead
(worker, direct, bare proxy in that order every sample) against the same with the order shuffled every sample
(`shuffle=True`), rounds alternating, against the demo replica as bench_relay_overhead.py sets it up.

usage: order_check.py SAMPLES PAIRS OUT.jsonl"""
import asyncio, json, os, sys, time
from flint.bench import bare_proxy, cluster_measure as m, floor


async def main(samples, pairs, out_path):
    async with floor.demo_replica() as (host, url, replica):
        await run(url, replica, samples, pairs, out_path)


async def run(url, replica, samples, pairs, out_path):
    wproc, worker = m.start_worker(url, "bench-a", "bench")
    pproc, proxy = bare_proxy.start(replica)
    try:
        await m.relay_overhead(worker, replica, samples=20, bare_proxy=proxy, prompt_tag="w")   # warm-up, not recorded
        for r in range(pairs):
            for shuffle in (False, True):
                load0, t0 = os.getloadavg()[0], time.time()
                out = await m.relay_overhead(worker, replica, samples=samples, bare_proxy=proxy, shuffle=shuffle,
                                             prompt_tag=f"{os.getpid()}p{r}{int(shuffle)}_")   # prompts no earlier round had
                rec = {"pair": r + 1, "order": "shuffled" if shuffle else "fixed", "utc": time.strftime("%H:%M:%S", time.gmtime(t0)),
                       "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], **out}
                with open(out_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"pair {r+1} {rec['order']:8s} load {rec['load_1m']} direct p50 {out['ttft_direct_ms']['p50']:6.3f}  "
                      f"added p50 {out['added_ttft_ms']['p50']:6.3f} p99 {out['added_ttft_ms']['p99']:6.3f}  "
                      f"bare p50 {out['bare_grpc_proxy_added_ttft_ms']['p50']:6.3f} p99 {out['bare_grpc_proxy_added_ttft_ms']['p99']:6.3f}  "
                      f"flint p50 {out['flint_over_bare_proxy_ms']['p50']:6.3f}", flush=True)
    finally:
        for p in (wproc, pproc): p.terminate(); p.wait(15)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
