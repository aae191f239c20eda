"""Variants of the internal hop's floor (flint.bench.floor): one-token TTFT through proxy processes in front of the
demo checkpoint's replica (a ReplicaHost in this process, as flint.bench.cluster._serving sets it up), interleaved.

usage: run_floor.py SAMPLES ROUNDS OUT.jsonl [VARIANT ...]   (no VARIANT: all)"""
import asyncio, json, os, subprocess, sys, tempfile, time
from flint.bench import bare_proxy, floor
from flint.frontend.liveness import LivenessConfig, engine_channel_options
from flint.security.internal import resolve_token

MSG = [["grpc.max_receive_message_length", 64 << 20], ["grpc.max_send_message_length", 64 << 20]]
WORKER = MSG + [list(o) for o in engine_channel_options(LivenessConfig())]   # the worker's channel (replicas.py)
TUNE = [["grpc.http2.bdp_probe", 0], ["grpc.enable_retries", 0], ["grpc.enable_channelz", 0],
        ["grpc.http2.lookahead_bytes", 4 << 20]]
SERVER_TUNE = [("grpc.http2.bdp_probe", 0), ("grpc.enable_channelz", 0), ("grpc.http2.lookahead_bytes", 4 << 20),
               ("grpc.max_concurrent_streams", 1000)]
W = ["--timeout-s", "3600", "--event-loop", "uvloop"]   # the worker's deadline (engine_call_timeout_s) and loop

# name -> (target: "tcp" | "unix" | "tcp_tuned", module, channel options, more flags)
VARIANTS = {
    "bare":        ("tcp", "flint.bench.bare_proxy", [], []),          # flint bench cluster's floor, as it is
    "worker":      ("tcp", "flint.bench.bare_proxy", WORKER, W),       # (a) the hop as a worker makes it
    "nobdp":       ("tcp", "flint.bench.bare_proxy", WORKER + TUNE[:1], W),
    "noretry":     ("tcp", "flint.bench.bare_proxy", WORKER + TUNE[1:2], W),
    "nokeepalive": ("tcp", "flint.bench.bare_proxy", MSG, W),
    "window":      ("tcp", "flint.bench.bare_proxy", WORKER + TUNE[3:], W),
    "minimal":     ("tcp", "flint.bench.bare_proxy", WORKER + [["grpc.minimal_stack", 1]], W),
    "allopts":     ("tcp", "flint.bench.bare_proxy", WORKER + TUNE, W),
    "allopts_srv": ("tcp_tuned", "flint.bench.bare_proxy", WORKER + TUNE, W),
    "unix":        ("unix", "flint.bench.bare_proxy", WORKER, W),      # (c)
    "unix_allopts": ("unix", "flint.bench.bare_proxy", WORKER + TUNE, W),
    "mux":         ("tcp", "flint.bench.floor", WORKER, ["--event-loop", "uvloop"]),   # (d)
    "mux_unix":    ("unix", "flint.bench.floor", WORKER, ["--event-loop", "uvloop"]),
    "raw_unix":    ("raw", "flint.bench.floor", [], ["--event-loop", "uvloop"]),    # no gRPC on the hop
    "raw_tcp":     ("raw_tcp", "flint.bench.floor", [], ["--event-loop", "uvloop"]),
}


def cpu_s(proc) -> float:
    """User + system CPU seconds of a process so far (/proc, clock ticks)."""
    fields = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(samples, rounds, out_path, names):
    async with floor.demo_replica() as (host, _, real):
        await run(host, real, samples, rounds, out_path, names)


async def run(host, real, samples, rounds, out_path, names):
    servicer = host._server._servicer
    tmp = tempfile.mkdtemp(prefix="flint-floor-")
    srv, tcp = await floor.floor_server(servicer, resolve_token(), f"{tmp}/replica.sock")
    srv2, tcp_tuned = await floor.floor_server(servicer, resolve_token(), f"{tmp}/tuned.sock",
                                               extra_options=SERVER_TUNE)
    raw = await floor.raw_server(servicer, f"{tmp}/raw.sock")
    raw_tcp = await floor.raw_server(servicer)
    targets = {"tcp": tcp, "unix": f"unix:{tmp}/replica.sock", "tcp_tuned": tcp_tuned, "raw": f"raw:unix:{tmp}/raw.sock",
               "raw_tcp": "raw:127.0.0.1:%d" % raw_tcp.sockets[0].getsockname()[1]}
    procs, proxies = [], {}
    try:
        for name in names:
            target, module, options, flags = VARIANTS[name]
            args = ["--channel-options", json.dumps(options), *flags] if options or flags else []
            proc, addr = bare_proxy.start(targets[target], *args, module=module)
            procs.append(proc); proxies[name] = addr
        cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("Model name")), "?")
        await floor.compare(tcp, proxies, samples=20, baseline=names[0], prompt_tag="w")    # warm-up, not recorded
        for r in range(rounds):
            load0, t0, cpu0 = os.getloadavg(), time.time(), {n: cpu_s(p) for n, p in zip(names, procs)}
            out = await floor.compare(tcp, proxies, samples=samples, baseline=names[0], direct_also={"direct_real": real, "direct_same": tcp},
                                    prompt_tag=f"{os.getpid()}r{r}_")   # prompts no earlier round had
            rec = {"round": r + 1, "utc": time.strftime("%H:%M:%S", time.gmtime(t0)), "elapsed_s": round(time.time() - t0, 1),
                   "load_start": [round(x, 2) for x in load0], "load_end": [round(x, 2) for x in os.getloadavg()],
                   "cpu": model, "variants": {n: VARIANTS[n][:1] + (VARIANTS[n][1].rsplit(".", 1)[1],) + tuple(VARIANTS[n][2:]) for n in names},
                   "result": out, "proxy_cpu_us_per_request": {
                       n: round((cpu_s(p) - cpu0[n]) / samples * 1e6) for n, p in zip(names, procs)}}
            with open(out_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"round {r+1} {rec['utc']} {rec['elapsed_s']} s load {rec['load_start'][0]}->{rec['load_end'][0]}  "
                  f"direct p50 {out['direct']['ttft_ms']['p50']}", flush=True)
            for n in [*names, "direct_real", "direct_same"]:
                v = out[n]
                print(f"  {n:13s} added p50 {v['added_ttft_ms']['p50']:7.3f} p99 {v['added_ttft_ms']['p99']:7.3f}   "
                      f"vs {names[0]} p50 {v['vs_baseline_ms']['p50']:7.3f} p99 {v['vs_baseline_ms']['p99']:7.3f}"
                      f"   proxy CPU {rec['proxy_cpu_us_per_request'].get(n, '-')} us/req", flush=True)
    finally:
        for p in procs: p.terminate()
        for p in procs: p.wait(15)
        await srv.stop(0); await srv2.stop(0); raw.close(); raw_tcp.close()

if __name__ == "__main__":
    names = sys.argv[4:] or list(VARIANTS)
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], names))
