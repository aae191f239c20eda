"""`flint bench cluster`'s frozen-replica part (flint.bench.cluster_measure.frozen_replica: SIGSTOP a replica
process mid-stream, seconds until the client's stream through a worker ends) for each engine transport in turn,
the worker started with `engine_transport` = T (otherwise the bench's own setup).

usage: frozen.py SAMPLES ROUNDS OUT.jsonl"""
import asyncio, functools, json, os, sys, time
from flint.bench import cluster_measure as m
from flint.engine.demo import ensure_demo_checkpoint
from flint.security.internal import ensure_process_token
from flint.valkey import EmbeddedValkey

start_worker = m.start_worker


async def main(samples, rounds, out_path):
    ensure_process_token()
    valkey = EmbeddedValkey()
    url = valkey.start()
    try:
        for r in range(rounds):
            for t in (("link", "grpc") if r % 2 == 0 else ("grpc", "link")):
                m.start_worker = functools.partial(start_worker, engine_transport=t)
                load0, t0 = os.getloadavg()[0], time.time()
                out = await m.frozen_replica(str(ensure_demo_checkpoint()), url, samples=samples)
                rec = {"round": r + 1, "transport": t, "utc": time.strftime("%H:%M:%S", time.gmtime(t0)),
                       "load_1m": [round(load0, 2), round(os.getloadavg()[0], 2)], **out}
                with open(out_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
    finally:
        valkey.stop()

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
