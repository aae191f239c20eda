import asyncio, os, random, sys, time
import numpy as np, grpc
from flint.bench import cluster_measure as m, floor
from flint.internal.v1 import engine_pb2
from flint.security.internal import EngineClient, resolve_token
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc

async def main(samples):
    from flint.engine.demo import ensure_demo_checkpoint
    from flint.security.internal import ensure_process_token
    from flint.valkey import EmbeddedValkey
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    rproc, replica = m.start_replica_process(str(ensure_demo_checkpoint()), url, "bench")
    try:
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
                        t0 = time.perf_counter(); first = None; fin = None
                        async for msg in call:
                            kind = msg.WhichOneof("kind")
                            if first is None and kind in ("delta", "final"): first = time.perf_counter() - t0
                            if kind == "final": fin = msg.final
                        if i >= 20:
                            t = fin.timings if k == "W" else fin
                            res[k].append((first * 1e3, t.queue_ms, t.prefill_ms, t.first_token_ms))
                for k in "WD":
                    a = np.array(res[k]); print(k, "ttft %.3f queue %.3f prefill %.3f first_token %.3f" % tuple(np.median(a, axis=0)))
        finally:
            proc.terminate(); proc.wait(15)
    finally:
        rproc.terminate(); rproc.wait(15); valkey.stop()
asyncio.run(main(int(sys.argv[1])))
