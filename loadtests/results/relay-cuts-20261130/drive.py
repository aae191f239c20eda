"""Drive one-token Complete requests through one worker (PYTHONPATH tree); print worker pid, run N requests."""
import asyncio, os, sys, json, subprocess, time, statistics
from dataclasses import asdict
import grpc
from flint.bench import relay
from flint.config import ReplicaConfig, FrontendConfig
from flint.replica.server import ReplicaServer
from flint.valkey import EmbeddedValkey
from flint.security.internal import ensure_process_token
from flint.v1 import flint_pb2 as pb, flint_pb2_grpc

def main_cpu(pid):
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

async def main(n, spy):
    ensure_process_token()
    valkey = EmbeddedValkey(); url = valkey.start()
    flat = ReplicaServer(relay.PacedEngine(0.0), ReplicaConfig(redis_url=url, key_prefix="p"))
    await flat.start()
    cfg = FrontendConfig(redis_url=url, worker_id="w", port=0, reuse_port=False, key_prefix="p")
    proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(cfg))], stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or "{}")
    spyp = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ready['port']}") as ch:
            stub = flint_pb2_grpc.FlintStub(ch)
            async def one():
                async for m in stub.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=1))): pass
            for _ in range(200): await one()
            if spy:
                spyp = subprocess.Popen(["/work/venv/bin/py-spy", "record", "-p", str(proc.pid), "-r", "2000", "-f", "raw", "-o", spy, "--nonblocking", "--threads"] , stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
                await asyncio.sleep(1.5)
            m0 = main_cpu(proc.pid); t0 = time.perf_counter()
            for _ in range(n): await one()
            dt = time.perf_counter() - t0
            print(f"main-thread cpu us/req {(main_cpu(proc.pid)-m0)/n*1e6:.0f}  wall us/req {dt/n*1e6:.0f} load {os.getloadavg()[0]:.2f}")
    finally:
        if spyp: spyp.send_signal(2); spyp.wait(30)
        proc.terminate(); proc.wait(15)
        await flat.stop(0); valkey.stop()

asyncio.run(main(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
