import asyncio, os, sys, json, subprocess, time
from dataclasses import asdict
import grpc, redis.asyncio as aioredis
from flint.bench import relay
from flint.config import ReplicaConfig, FrontendConfig
from flint.replica.server import ReplicaServer
from flint.valkey import EmbeddedValkey
from flint.security.internal import ensure_process_token
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc
async def main():
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
            async def one():
                async for m in stub.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=1))): pass
            for _ in range(20): await one()
            r = aioredis.Redis.from_url(url)
            mon = subprocess.Popen(["redis-cli", "-u", url, "monitor"], stdout=open("/tmp/rp/mon.txt", "w")) if False else None
            async with r.monitor() as m:
                lines = []
                async def reader():
                    async for cmd in m.listen(): lines.append(cmd)
                t = asyncio.create_task(reader()); await asyncio.sleep(0.3); lines.clear()
                for _ in range(5): await one()
                await asyncio.sleep(0.3); t.cancel()
            for l in lines: print(l.get("client_address"), l.get("command")[:150])
            print(len(lines), "commands for 5 requests")
    finally:
        proc.terminate(); proc.wait(15); await flat.stop(0); valkey.stop()
asyncio.run(main())
