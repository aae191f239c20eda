"""The relay part of `flint bench cluster` alone: flint.bench.cluster_measure.relay_overhead (one-token TTFT via a
front-end worker process, straight to the replica and through flint.bench.bare_proxy, 200 samples in the bench's
order) against the demo checkpoint in a ReplicaHost, as flint.bench.cluster._serving sets it up."""
import asyncio, json, os, sys
from flint.bench import bare_proxy, cluster_measure as m
from flint.config import ReplicaConfig
from flint.engine.config import EngineConfig
from flint.engine.demo import ensure_demo_checkpoint
from flint.replica.host import ReplicaHost
from flint.security.internal import ensure_process_token
from flint.valkey import EmbeddedValkey

async def main(samples, rounds):
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    host = ReplicaHost(EngineConfig.from_dict({"model": str(ensure_demo_checkpoint()), "kv_cache_bytes": 1 << 26}),
                       ReplicaConfig(redis_url=url, key_prefix="bench"))
    replica = await host.start()
    wproc, worker = m.start_worker(url, "bench-a", "bench")
    pproc, proxy = bare_proxy.start(replica)
    try:
        for r in range(rounds):
            load0 = os.getloadavg()[0]
            out = await m.relay_overhead(worker, replica, samples=samples, bare_proxy=proxy)
            out["load_average_1m"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
            print(json.dumps(out), flush=True)
    finally:
        for p in (wproc, pproc): p.terminate(); p.wait(15)
        await host.stop(0); valkey.stop()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
