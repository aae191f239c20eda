"""Per sample one one-token `Complete` via a front-end worker and one `Generate` straight to the demo replica,
in a shuffled order, with the engine's own timings of each (its Final: queue, prefill, first token); medians.

usage: pf.py SAMPLES [--engine-threads N] [--replica-process]
  --engine-threads N   the demo engine's num_threads (default: the engine's own, the cores given)
  --replica-process    the replica in a process of its own (cluster_measure.start_replica_process), so the
                       client no longer shares its process; otherwise in this process, as `flint bench cluster`
(The runs in pf.txt named pf2.py and pfsep.py were this script's two options, then separate copies of it.)"""
import argparse, asyncio, contextlib, os, random, time
import numpy as np, grpc
from flint.bench import cluster_measure as m
from flint.internal.v1 import engine_pb2
from flint.security.internal import EngineClient, resolve_token
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc


@contextlib.asynccontextmanager
async def demo_replica(threads: int, own_process: bool):
    """(redis_url, replica address) of the demo checkpoint's replica, with embedded Valkey."""
    from flint.config import ReplicaConfig
    from flint.engine.config import EngineConfig
    from flint.engine.demo import ensure_demo_checkpoint
    from flint.replica.host import ReplicaHost
    from flint.security.internal import ensure_process_token
    from flint.valkey import EmbeddedValkey

    ensure_process_token()
    valkey = EmbeddedValkey()
    url = valkey.start()
    try:
        if own_process:
            proc, address = m.start_replica_process(str(ensure_demo_checkpoint()), url, "bench")
            try:
                yield url, address
            finally:
                proc.terminate(); proc.wait(15)
        else:
            config = {"model": str(ensure_demo_checkpoint()), "kv_cache_bytes": 1 << 26}
            if threads:
                config["num_threads"] = threads
            host = ReplicaHost(EngineConfig.from_dict(config), ReplicaConfig(redis_url=url, key_prefix="bench"))
            address = await host.start()
            try:
                yield url, address
            finally:
                await host.stop(0)
    finally:
        valkey.stop()


async def timed(call, via_worker: bool) -> tuple:
    """(TTFT ms, queue, prefill, first token ms as the engine timed them) of one call read to its end."""
    t0, first, final = time.perf_counter(), None, None
    async for msg in call:
        kind = msg.WhichOneof("kind")
        if first is None and kind in ("delta", "final"):
            first = time.perf_counter() - t0
        if kind == "final":
            final = msg.final.timings if via_worker else msg.final
    return first * 1e3, final.queue_ms, final.prefill_ms, final.first_token_ms


async def main(samples: int, threads: int, own_process: bool):
    async with demo_replica(threads, own_process) as (url, replica):
        proc, addr = m.start_worker(url, "pf", "bench")
        try:
            async with grpc.aio.insecure_channel(addr) as cw, grpc.aio.insecure_channel(replica) as cr:
                front, engine = flint_pb2_grpc.FlintStub(cw), EngineClient(cr, resolve_token())
                res = {"W": [], "D": []}
                for i in range(samples):
                    prefix = f"def f_{os.getpid()}_{i}(x):\n    return x + {i}\n"
                    ks = ["W", "D"]; random.Random(i).shuffle(ks)
                    for k in ks:
                        if k == "W":
                            call = front.Complete(pb.CompleteRequest(prefix=prefix + "#w", sampling=pb.Sampling(max_tokens=1)))
                        else:
                            call = engine.Generate(engine_pb2.GenerateRequest(request_id=f"d-{i}-{time.time_ns()}", prefix=prefix + "#d",
                                       cache_namespace="bench-direct", sampling=engine_pb2.SamplingParams(max_tokens=1)))
                        row = await timed(call, k == "W")
                        if i >= 20:
                            res[k].append(row)
                for k in "WD":
                    a = np.array(res[k]); print(k, "ttft %.3f queue %.3f prefill %.3f first_token %.3f" % tuple(np.median(a, axis=0)))
        finally:
            proc.terminate(); proc.wait(15)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("samples", type=int)
    p.add_argument("--engine-threads", type=int, default=0)
    p.add_argument("--replica-process", action="store_true")
    a = p.parse_args()
    asyncio.run(main(a.samples, a.engine_threads, a.replica_process))
