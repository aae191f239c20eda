"""Relay throughput A/B, same run: a stand-in replica (PacedEngine, flat out) in this process, a worker of this
tree and one of BASE_PP's (journal on, as `flint bench cluster`), flint.bench.relay.throughput alternated.
Usage: BASE_PP=DIR/services PYTHONPATH=$PWD/services python thr_ab.py ROUNDS SECONDS"""
import asyncio, json, os, subprocess, sys
from dataclasses import asdict

async def main(rounds, seconds):
    from flint.bench import relay
    from flint.config import FrontendConfig, ReplicaConfig
    from flint.replica.server import ReplicaServer
    from flint.security.internal import ensure_process_token
    from flint.valkey import EmbeddedValkey
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    stand_in = ReplicaServer(relay.PacedEngine(0.0), ReplicaConfig(redis_url=url, key_prefix="thr"))
    await stand_in.start()
    procs = {}
    import redis.asyncio as aioredis
    admin = aioredis.Redis.from_url(url)

    async def info(a):
        stats, cpu = await a.info("stats"), await a.info("cpu")
        return stats["total_commands_processed"], cpu["used_cpu_sys"] + cpu["used_cpu_user"]
    try:
        for label, pp in (("resp", os.environ["PYTHONPATH"]), ("base", os.environ["BASE_PP"])):
            cfg = FrontendConfig(redis_url=url, worker_id=f"thr-{label}", port=0, reuse_port=False, key_prefix="thr")
            proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(cfg))],
                                    stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=pp))
            procs[label] = (proc, f"127.0.0.1:{json.loads(proc.stdout.readline())['port']}")
        for label, (proc, addr) in procs.items():   # warm
            await relay.throughput(addr, proc.pid, streams=8, seconds=1.0, tokens=2000)
        for r in range(rounds):
            for label in (("base", "resp") if r % 2 == 0 else ("resp", "base")):
                proc, addr = procs[label]
                load = os.getloadavg()[0]
                i0 = await info(admin)
                out = await relay.throughput(addr, proc.pid, streams=8, seconds=seconds, tokens=2000)
                i1 = await info(admin)
                out["valkey_commands"] = i1[0] - i0[0]
                out["valkey_cpu_s"] = round(i1[1] - i0[1], 2)
                print(json.dumps({"round": r + 1, "code": label, "load": round(load, 2), **out}), flush=True)
    finally:
        for proc, _ in procs.values():
            proc.terminate(); proc.wait(15)
        await stand_in.stop(0); valkey.stop()

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
