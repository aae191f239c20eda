"""`flint load soak`: a bounded soak with injected faults on a local multi-node cluster.

What runs (all on this machine, loopback only): a local Ray cluster of a head
and `--nodes` worker nodes (`flint.cluster.local`, one `ray start` process
tree per node), an embedded Valkey, engine replica actors pinned one per
worker node (restartable: Ray restarts a crashed replica), front-end worker
processes sharing one port (SO_REUSEPORT), and the `flint load` keystroke
scenario against that port, with lost streams resumed by the load target.

Faults, one every `--fault-interval-s`, in turn: SIGKILL a front-end worker
(a replacement starts at once; its clients resume on another worker), SIGKILL
a replica's process (Ray restarts it), SIGTERM a worker (drain, as a rolling
upgrade does; a replacement starts first).

What it writes (`soak.json`, `soak.md`): requests completed / resumed /
failed by status, tokens lost, and the memory (RSS) of every process at its
first and last sample and its peak. Tokens lost are measured per request:
the seqs of its deltas must run 1, 2, 3, ... with no gap or repeat, and the
tokens it received must equal the server's Final.completion_tokens; a request
that failed after receiving tokens counts as cut off.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flint.errors import InvalidArgument
from flint.load.soak_report import account, write_results

FAULTS = ("kill_worker", "kill_replica", "drain_worker")
KEY_PREFIX = "flint-soak"


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 120.0          # load runs this long (then in-flight requests drain)
    users: int = 4                     # simulated editors typing (keystroke scenario)
    nodes: int = 2                     # Ray worker nodes; one engine replica on each
    workers: int = 2                   # front-end worker processes on one port
    fault_interval_s: float = 20.0
    model: str = ""                    # HF checkpoint directory; "" = the demo checkpoint
    seed: int = 0
    out_dir: str = "loadtests/results"
    hostile: bool = False              # a hostile tenant beside the load instead of faults (flint.load.soak_hostile)

    def __post_init__(self) -> None:
        if not 5 <= self.duration_s <= 3600:
            raise InvalidArgument(f"duration_s={self.duration_s}: a soak is bounded, use 5..3600 s")
        if self.users < 1 or self.nodes < 1 or self.workers < 2:
            raise InvalidArgument("need users >= 1, nodes >= 1 and workers >= 2 (a killed worker needs a peer)")
        if self.fault_interval_s < 2:
            raise InvalidArgument("fault_interval_s must be >= 2 s")


_HELP = {"duration_s": "seconds of load (then in-flight requests drain)",
         "users": "simulated developers typing (keystroke scenario)",
         "nodes": "Ray worker nodes, one engine replica on each", "workers": "front-end worker processes on one port",
         "fault_interval_s": "seconds between injected faults", "model": "HF checkpoint directory ('' = the demo)",
         "seed": "scenario seed", "out_dir": "where soak.json and soak.md go",
         "hostile": "no faults: the load is the victim tenant, a second tenant attacks (writes soak-hostile.*)"}


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Memory:
    """RSS of named processes, sampled in a thread: first, last and peak per process."""

    def __init__(self, interval_s: float = 1.0):
        self.pids: dict[str, int] = {}
        self.samples: dict[str, dict] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval_s,), daemon=True)

    def track(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self.sample_one(name)

    def sample_one(self, name: str) -> None:
        mib = rss_mib(self.pids[name])
        if mib is None:
            return
        s = self.samples.setdefault(name, {"pid": self.pids[name], "first_mib": mib, "peak_mib": mib,
                                           "t_first_s": time.monotonic()})
        s["last_mib"], s["peak_mib"], s["t_last_s"] = mib, max(s["peak_mib"], mib), time.monotonic()

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            for name in list(self.pids):
                self.sample_one(name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> dict[str, dict]:
        self._stop.set()
        self._thread.join()
        out = {}
        for name, s in self.samples.items():
            out[name] = {"pid": s["pid"], "first_mib": round(s["first_mib"], 1), "last_mib": round(s["last_mib"], 1),
                         "peak_mib": round(s["peak_mib"], 1), "growth_mib": round(s["last_mib"] - s["first_mib"], 1),
                         "sampled_s": round(s["t_last_s"] - s["t_first_s"], 1)}
        return out


class Stack:
    """The processes under test and the faults applied to them."""

    def __init__(self, cfg: SoakConfig, say, security: dict | None = None):
        self.cfg, self.say, self.security = cfg, say, security or {}
        self.memory = Memory()
        self.faults: list[dict] = []
        self.workers: list[tuple[str, subprocess.Popen]] = []
        self.replicas: list[tuple[str, object]] = []   # (name, actor)
        self.port = 0
        self._worker_seq = 0
        self._replica_gen: dict[str, int] = {}
        self.t0 = time.monotonic()
        from flint.security.internal import ensure_process_token

        ensure_process_token()  # the replicas and worker processes of this run share one internal API token

    # -------------------------------------------------------------- start
    def start_replicas(self, redis_url: str, engine_config) -> None:
        from flint.config import ReplicaConfig
        from flint.replica.host import start_replica_actors

        replica_config = ReplicaConfig(redis_url=redis_url, key_prefix=KEY_PREFIX, heartbeat_interval_s=0.5,
                                       heartbeat_ttl_s=2.0, grace_period_s=2.0)
        for i in range(self.cfg.nodes):
            node = f"w{i + 1}"
            [(actor, address)] = start_replica_actors(
                engine_config, replica_config, count=1, num_cpus=0, timeout_s=300, max_restarts=-1,
                resources={f"flint_node_{node}": 0.01})
            name = f"replica-{node}"
            self.replicas.append((name, actor))
            self._replica_gen[name] = 1
            self._track_replica(name, actor)
            self.say(f"  engine replica on node {node} at {address}")

    def _track_replica(self, name: str, actor) -> None:
        import ray

        pid = ray.get(actor.pid.remote(), timeout=60)
        self.memory.track(f"{name}#{self._replica_gen[name]}", pid)

    def start_worker(self, redis_url: str) -> None:
        from flint.config import FrontendConfig

        self._worker_seq += 1
        worker_id = f"fe{self._worker_seq}"
        config = FrontendConfig(redis_url=redis_url, worker_id=worker_id, port=self.port, reuse_port=True,
                                key_prefix=KEY_PREFIX, grace_period_s=5.0, security=self.security)
        proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config",
                                 json.dumps(asdict(config))], stdout=subprocess.PIPE, text=True)
        ready = json.loads(proc.stdout.readline() or "{}")
        if ready.get("event") != "listening":
            proc.kill()
            raise RuntimeError(f"front-end worker {worker_id} did not start")
        self.port = ready["port"]
        self.workers.append((worker_id, proc))
        self.memory.track(worker_id, proc.pid)

    # -------------------------------------------------------------- faults
    def fault(self, kind: str, redis_url: str) -> None:
        t = round(time.monotonic() - self.t0, 1)
        if kind == "kill_replica":
            self._kill_replica(t)
            return
        name, proc = self.workers.pop(0)          # the oldest worker
        self.start_worker(redis_url)               # its replacement listens before it goes
        if kind == "kill_worker":
            proc.send_signal(signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        self.faults.append({"t_s": t, "kind": kind, "process": name, "replacement": self.workers[-1][0],
                            "exit_code": code})
        self.say(f"  {t:6.1f} s  {kind} {name} -> {self.workers[-1][0]}")

    def _kill_replica(self, t: float) -> None:
        import ray

        from flint.replica.host import wait_until_serving

        index = sum(1 for f in self.faults if f["kind"] == "kill_replica") % len(self.replicas)
        name, actor = self.replicas[index]
        pid = ray.get(actor.pid.remote(), timeout=30)
        os.kill(pid, signal.SIGKILL)
        started = time.monotonic()
        wait_until_serving(actor, timeout_s=300)
        restarted_s = round(time.monotonic() - started, 1)
        self._replica_gen[name] += 1
        self._track_replica(name, actor)
        self.faults.append({"t_s": t, "kind": "kill_replica", "process": f"{name}#{self._replica_gen[name] - 1}",
                            "replacement": f"{name}#{self._replica_gen[name]} (restarted by Ray)",
                            "restarted_after_s": restarted_s})
        self.say(f"  {t:6.1f} s  kill_replica {name} (pid {pid}); Ray restarted it in {restarted_s} s")

    def stop_workers(self) -> None:
        for _, proc in self.workers:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in self.workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def running_stack(cfg: SoakConfig, say=print, security: dict | None = None):
    """The local cluster, Valkey, replicas and front-end workers of a soak, up; yields (stack, redis_url, model).

    `security` is the workers' FrontendConfig.security table (API keys, TLS): none by default.
    """
    # The local cluster's nodes run with token auth off (see flint.cluster.local); the driver must too, set
    # before Ray is imported: a parent process that ran a local Ray exports RAY_AUTH_MODE=token, and with it
    # this driver's actors never started ("cancelled before it started running").
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    from flint.cluster.local import LocalCluster, LocalClusterConfig
    from flint.engine.config import EngineConfig
    from flint.valkey import EmbeddedValkey

    model = cfg.model
    if not model:
        from flint.engine import demo

        model = str(demo.ensure_demo_checkpoint())
    engine_config = EngineConfig.from_dict({"kv_cache_bytes": 1 << 27, "num_threads": 1}, model=model)
    from flint.engine import kernels

    kernels.prebuild(say=say)   # as `flint serve` does: replicas then load them, not build them while starting
    with tempfile.TemporaryDirectory(prefix="flint-soak-") as state_dir:
        cluster = LocalCluster(LocalClusterConfig(workers=cfg.nodes, cpus_per_node=1, shards_per_node=0,
                                                  state_dir=state_dir))
        say(f"Local Ray cluster: head + {cfg.nodes} worker node(s)...")
        cluster.start()
        valkey = EmbeddedValkey()
        stack = Stack(cfg, say, security or {})
        try:
            redis_url = valkey.start()
            ray.init(address=cluster.address, namespace="flint-soak", log_to_driver=False, logging_level="WARNING")
            stack.memory.track("valkey", _valkey_pid(redis_url))
            stack.memory.track("driver", os.getpid())
            stack.start_replicas(redis_url, engine_config)
            for _ in range(cfg.workers):
                stack.start_worker(redis_url)
            say(f"  {cfg.workers} front-end workers on 127.0.0.1:{stack.port}")
            stack.memory.start()
            yield stack, redis_url, model
        finally:
            stack.stop_workers()
            if ray.is_initialized():
                from flint.replica.host import stop_replica_actors

                stop_replica_actors([a for _, a in stack.replicas], grace_s=1.0)
                ray.shutdown()
            valkey.stop()
            cluster.stop()


def run_soak(cfg: SoakConfig, say=print) -> dict:
    """Bring the stack up, run the load with faults, take it down; returns the results (also written)."""
    from flint.load.orchestrate import machine_info, run

    with running_stack(cfg, say) as (stack, redis_url, model):
        load = _run_config(cfg, stack.port)
        holder: dict = {}
        loader = threading.Thread(target=lambda: holder.update(result=run(load, quiet=True, label="soak")))
        stack.t0 = time.monotonic()
        loader.start()
        say(f"Keystroke load from {cfg.users} users for {cfg.duration_s:g} s; a fault every "
            f"{cfg.fault_interval_s:g} s")
        n = 0
        while loader.is_alive():
            loader.join(cfg.fault_interval_s)
            if loader.is_alive() and time.monotonic() - stack.t0 < cfg.duration_s - 2:
                stack.fault(FAULTS[n % len(FAULTS)], redis_url)
                n += 1
        result = holder.get("result")
        if result is None:
            raise RuntimeError("the load run ended without a result (see the error above)")
        memory = stack.memory.stop()
    results = {
        "machine": machine_info(), "model": {"path": model, "demo": not cfg.model},
        "cluster": {"ray_nodes": 1 + cfg.nodes, "replicas": cfg.nodes, "frontend_workers": cfg.workers},
        "load": {"scenario": "keystroke", "users": cfg.users, "duration_s": cfg.duration_s, "seed": cfg.seed,
                 "resume": True},
        "faults": stack.faults, "memory": memory, **account(result.records)}
    write_results(results, Path(cfg.out_dir))
    return results


def _run_config(cfg: SoakConfig, port: int, duration_s: float | None = None, target: dict | None = None):
    from flint.load.config import load_run_config

    return load_run_config(None, {
        "scenario": "keystroke", "seed": cfg.seed, "label": "soak",
        "arrival": {"kind": "users", "users": cfg.users},
        "bounds": {"duration_s": duration_s or cfg.duration_s, "drain_s": 60.0},
        "target": {"address": f"127.0.0.1:{port}", "request_timeout_s": 120.0, **(target or {})}})


def _valkey_pid(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="flint load soak", description=__doc__.split("\n\n")[0])
    for name, field in SoakConfig.__dataclass_fields__.items():
        if isinstance(field.default, bool):
            p.add_argument("--" + name.replace("_", "-"), action="store_true", help=_HELP[name])
            continue
        p.add_argument("--" + name.replace("_", "-"), type=type(field.default), default=field.default,
                       help=f"{_HELP[name]} (default {field.default!r})")
    args = p.parse_args(argv)
    cfg = SoakConfig(**vars(args))
    if cfg.hostile:
        from flint.load.soak_hostile import main_hostile

        return main_hostile(cfg)
    results = run_soak(cfg)
    t = results["tokens"]
    print(f"requests: {results['requests']}; tokens received {t['received']}, lost {t['lost']}, "
          f"cut off {results['requests']['failed_after_tokens']}; wrote {cfg.out_dir}/soak.json and soak.md")
    return 0 if t["lost"] == 0 and results["requests"]["failed_after_tokens"] == 0 else 1
