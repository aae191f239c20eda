import asyncio, os, sys, json, subprocess, time, statistics
from dataclasses import asdict
import grpc
from flint.bench import relay
from flint.config import ReplicaConfig, FrontendConfig
from flint.replica.server import ReplicaServer
from flint.valkey import EmbeddedValkey
from flint.security.internal import ensure_process_token
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc
async def main(n, block):
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    flat = ReplicaServer(relay.PacedEngine(0.0), ReplicaConfig(redis_url=url, key_prefix="p"))
    await flat.start()
    cfg = FrontendConfig(redis_url=url, worker_id="w", port=0, reuse_port=False, key_prefix="p")
    proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(cfg))], stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or "{}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ready['port']}") as ch:
            stub = flint_pb2_grpc.FlintStub(ch)
            lat = []
            for i in range(n):
                t = time.perf_counter(); f = None
                async for m in stub.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=1))):
                    if f is None and m.WhichOneof("kind") == "delta": f = time.perf_counter() - t
                lat.append(f)
                if (i + 1) % block == 0:
                    b = lat[-block:]
                    rss = int(open(f"/proc/{proc.pid}/status").read().split("VmRSS:")[1].split()[0])
                    print(f"{i+1}: p50 {statistics.median(b)*1e3:.3f} ms  rss {rss} kB load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        proc.terminate(); proc.wait(15); await flat.stop(0); valkey.stop()
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
