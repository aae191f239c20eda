"""drive.py with time stamps on the client (C.t0, C.ack, C.eof), for a tree patched by timestamps_patch.py: argv N."""
import asyncio, json, os, sys, time
sys.path.insert(0, os.environ["PYTHONPATH"].split(":")[0])
import grpc

async def loop(a_addr, b_addr, n, mark):
    from flint.v1 import flint_pb2 as pb, flint_pb2_grpc
    async with grpc.aio.insecure_channel(a_addr) as ca, grpc.aio.insecure_channel(b_addr) as cb:
        a, b = flint_pb2_grpc.FlintStub(ca), flint_pb2_grpc.FlintStub(cb)
        for i in range(n):   # the request of cluster_measure.interrupt_latency
            rid = f"bench-int-{i}-{time.time_ns()}"
            sampling = pb.Sampling(max_tokens=400, temperature=1.0, seed=i + 1)
            call = a.Edit(pb.EditRequest(request_id=rid, code="x = 1\ny = 2\n", instruction="rename x", sampling=sampling))
            kind = None
            while kind != "delta" and (m := await call.read()) is not grpc.aio.EOF:
                kind = m.WhichOneof("kind")
            if kind != "delta":
                continue
            mark("C.t0", rid)
            ack = await b.Interrupt(pb.InterruptRequest(request_id=rid), timeout=30)
            mark("C.ack", rid)
            while (m := await call.read()) is not grpc.aio.EOF:
                pass
            mark("C.eof", rid)

async def main(n):
    from flint.bench import cluster_measure as m
    from flint.config import ReplicaConfig
    from flint.engine.config import EngineConfig
    from flint.engine.demo import ensure_demo_checkpoint
    from flint.replica.host import ReplicaHost
    from flint.security.internal import ensure_process_token
    from flint.valkey import EmbeddedValkey
    from itrace import mark
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    procs, host = [], None
    try:
        host = ReplicaHost(EngineConfig.from_dict({"model": str(ensure_demo_checkpoint()), "kv_cache_bytes": 1 << 26}),
                           ReplicaConfig(redis_url=url, key_prefix="bench"))
        await host.start()
        for wid in ("bench-a", "bench-b"):
            procs.append(m.start_worker(url, wid, "bench"))
        (_, a), (_, b) = procs
        await loop(a, b, 5, lambda *x: None)
        await loop(a, b, n, mark)
        print(os.getloadavg())
    finally:
        for p, _ in procs:
            p.terminate(); p.wait(15)
        await host.stop(0)
        valkey.stop()
asyncio.run(main(int(sys.argv[1])))
