"""Interrupt-only driver: embedded Valkey, an in-process ReplicaHost (demo model), two worker processes,
cluster_measure.interrupt_latency. Usage: PYTHONPATH=<tree>/services python drive.py N [label]"""
import asyncio, json, os, sys, time
sys.path.insert(0, os.environ["PYTHONPATH"].split(":")[0])

async def main(n, label):
    from flint.bench import cluster_measure as m
    from flint.config import ReplicaConfig
    from flint.engine.config import EngineConfig
    from flint.engine.demo import ensure_demo_checkpoint
    from flint.replica.host import ReplicaHost
    from flint.security.internal import ensure_process_token
    from flint.valkey import EmbeddedValkey
    import flint
    ensure_process_token()
    checkpoint = str(ensure_demo_checkpoint())
    valkey = EmbeddedValkey(); url = valkey.start()
    procs, host = [], None
    try:
        host = ReplicaHost(EngineConfig.from_dict({"model": checkpoint, "kv_cache_bytes": 1 << 26}),
                           ReplicaConfig(redis_url=url, key_prefix="bench"))
        await host.start()
        for wid in ("bench-a", "bench-b"):
            procs.append(m.start_worker(url, wid, "bench"))
        (_, a), (_, b) = procs
        await m.interrupt_latency(a, b, samples=5)  # warm-up
        load0 = os.getloadavg()
        r = await m.interrupt_latency(a, b, samples=n)
        r["load_start"] = [round(x, 2) for x in load0]
        r["load_end"] = [round(x, 2) for x in os.getloadavg()]
        r["label"] = label; r["flint"] = flint.__file__; r["checkpoint"] = checkpoint
        print(json.dumps(r))
    finally:
        for p, _ in procs:
            p.terminate(); p.wait(15)
        if host is not None:
            await host.stop(0)
        valkey.stop()

asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""))
