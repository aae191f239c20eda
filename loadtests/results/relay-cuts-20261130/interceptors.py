import asyncio, os, sys, time, subprocess, statistics
import grpc
sys.path.insert(0, os.environ.get("FLINT_PP", ""))
MODE = sys.argv[1] if len(sys.argv) > 1 else "client"

async def server(mode):
    from flint.grpc_status import ErrorInterceptor
    from flint.security.connections import ConnectionCallCap
    async def stream(req, ctx):
        yield b"a"; yield b"b"
    h = grpc.method_handlers_generic_handler("t.T", {"S": grpc.unary_stream_rpc_method_handler(stream)})
    ics = {"none": [], "flint": [ErrorInterceptor(), ConnectionCallCap(100)]}[mode]
    s = grpc.aio.server(interceptors=ics)
    s.add_generic_rpc_handlers((h,))
    port = s.add_insecure_port("127.0.0.1:0"); await s.start()
    print(port, flush=True)
    await s.wait_for_termination()

def cpu(pid):
    with open(f"/proc/{pid}/task/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")

async def client():
    procs = {m: subprocess.Popen([sys.executable, __file__, m], stdout=subprocess.PIPE, text=True, env=os.environ) for m in ("none", "flint")}
    ports = {m: int(p.stdout.readline()) for m, p in procs.items()}
    chans = {m: grpc.aio.insecure_channel(f"127.0.0.1:{ports[m]}") for m in procs}
    calls = {m: chans[m].unary_stream("/t.T/S") for m in procs}
    lat = {m: [] for m in procs}
    for _ in range(300):
        for m in procs:
            async for _ in calls[m](b"x"): pass
    c0 = {m: cpu(p.pid) for m, p in procs.items()}
    N = 3000
    for i in range(N):
        for m in (("none", "flint") if i % 2 else ("flint", "none")):
            t = time.perf_counter()
            async for _ in calls[m](b"x"): pass
            lat[m].append(time.perf_counter() - t)
    for m, p in procs.items():
        print(m, f"p50 {statistics.median(lat[m])*1e6:.0f} us, main cpu/call {(cpu(p.pid)-c0[m])/N*1e6:.0f} us")
    print("paired p50 flint-none", statistics.median([a - b for a, b in zip(lat["flint"], lat["none"])]) * 1e6, "us")
    for p in procs.values(): p.terminate()

if MODE == "client": asyncio.run(client())
else: asyncio.run(server(MODE))
