"""`flint cluster up|down|status`: a multi-node Ray cluster on one machine.

Each node is its own `ray start --block` process tree (head + N workers), with
its own resources, ports and a marker resource `flint_node_<name>` so tests
and benchmarks can place work on a chosen node. That exercises the same code
paths as a real multi-machine cluster (cross-node actors, placement groups
that spread, node loss) without a second machine.

Why `ray start --block` per node rather than daemonized `ray start`: the
blocking launcher owns the node's processes and tears them all down on
SIGTERM, so `down` stops exactly this cluster by pid and never touches other
Ray instances on the machine (`ray stop` would kill them all).

The state file (`<state_dir>/cluster.json`) records the head address and each
node's launcher pid, so `down` and `status` work from another shell.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from flint.errors import InvalidArgument, Unavailable

STATE_FILE = "cluster.json"
SHARD_RESOURCE = "flint_shard"        # one unit = one shard worker slot ("accelerator" on CPU)
NODE_RESOURCE_PREFIX = "flint_node_"  # flint_node_<name>: 1 on each node, for pinning


def default_state_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_state_dir("flint")) / "local-cluster"


@dataclass(frozen=True)
class LocalClusterConfig:
    """Shape of the local cluster. Small CPU counts: the dev machine has 2 cores."""

    workers: int = 2                  # worker nodes besides the head
    cpus_per_node: int = 1            # Ray logical CPUs declared per node (ray start takes integers)
    shards_per_node: int = 2          # flint_shard slots per node (shard workers it can host)
    object_store_mb: int = 128        # per node; Ray's minimum is ~75 MB
    start_timeout_s: float = 90.0
    state_dir: str = ""               # "" = platform state dir

    def __post_init__(self) -> None:
        if not 0 <= self.workers <= 16:
            raise InvalidArgument(f"workers={self.workers}: use 0..16 worker nodes")
        if self.cpus_per_node < 0:
            raise InvalidArgument(f"cpus_per_node={self.cpus_per_node}: must be >= 0")
        if not 0 <= self.shards_per_node <= 64:
            raise InvalidArgument(f"shards_per_node={self.shards_per_node}: use 0..64")
        if self.object_store_mb < 80:
            raise InvalidArgument(f"object_store_mb={self.object_store_mb}: Ray needs at least 80")

    @classmethod
    def from_dict(cls, values: dict) -> "LocalClusterConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidArgument(f"unknown local cluster settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir()


@dataclass
class NodeState:
    name: str                         # "head", "w1", "w2", ...
    pid: int                          # pid of its `ray start --block` launcher
    log_path: str

    @property
    def resource(self) -> str:
        return NODE_RESOURCE_PREFIX + self.name


@dataclass
class ClusterState:
    address: str                      # GCS address of the head, "host:port"
    temp_dir: str
    nodes: list[NodeState] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ClusterState":
        raw = json.loads(text)
        return cls(address=raw["address"], temp_dir=raw["temp_dir"],
                   nodes=[NodeState(**n) for n in raw["nodes"]])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


class LocalCluster:
    """Start/stop a head and worker nodes as separate `ray start` process trees."""

    def __init__(self, config: LocalClusterConfig):
        self.config = config
        self.state: ClusterState | None = None

    @property
    def address(self) -> str:
        if self.state is None:
            raise Unavailable("local cluster is not running: run `flint cluster up`")
        return self.state.address

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> ClusterState:
        state_dir = self.config.state_path
        state_dir.mkdir(parents=True, exist_ok=True)
        existing = load_state(state_dir)
        if existing is not None and any(_alive(n.pid) for n in existing.nodes):
            raise InvalidArgument(
                f"a local cluster is already running at {existing.address} "
                f"(state in {state_dir}); run `flint cluster down` first")
        # Ray limits socket paths to ~107 bytes, so the temp dir must be short.
        temp_dir = f"/tmp/flint-ray-{os.getpid()}-{int(time.time()) % 100000}"
        port = _free_port()
        address = f"127.0.0.1:{port}"
        self.state = ClusterState(address=address, temp_dir=temp_dir)
        try:
            head = self._launch("head", state_dir, head_port=port)
            self.state.nodes.append(head)
            self._wait_for_nodes(1)
            # One node at a time: nodes launched together race for Ray's default ports.
            for i in range(1, self.config.workers + 1):
                self.state.nodes.append(self._launch(f"w{i}", state_dir))
                self._wait_for_nodes(1 + i)
        except BaseException:
            self.stop()
            raise
        (state_dir / STATE_FILE).write_text(self.state.to_json())
        return self.state

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM every node launcher (workers first), then SIGKILL stragglers' groups."""
        state = self.state or load_state(self.config.state_path)
        if state is None:
            return
        for node in reversed(state.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for node in state.nodes:
            while _alive(node.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            # Helper processes of the node share the launcher's process group;
            # stragglers (a launcher still draining) are killed outright.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.pid, signal.SIGKILL)
            kill_deadline = time.monotonic() + 5.0
            while _alive(node.pid) and time.monotonic() < kill_deadline:
                time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.config.state_path / STATE_FILE).unlink()
        # Ray's session dir (sockets, spilled objects, worker logs) dies with the cluster.
        shutil.rmtree(state.temp_dir, ignore_errors=True)
        self.state = None

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------

    def _launch(self, name: str, state_dir: Path, head_port: int | None = None) -> NodeState:
        assert self.state is not None
        cfg = self.config
        resources = {NODE_RESOURCE_PREFIX + name: 1}
        if cfg.shards_per_node:
            resources[SHARD_RESOURCE] = cfg.shards_per_node
        ray_bin = str(Path(sys.executable).with_name("ray"))
        cmd = [
            ray_bin, "start", "--block", "--disable-usage-stats",
            "--node-ip-address", "127.0.0.1",
            f"--num-cpus={cfg.cpus_per_node}", "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            f"--object-store-memory={cfg.object_store_mb * 1024 * 1024}",
            "--include-log-monitor=false",
            # The default (52365) is taken by the first node on this machine.
            f"--dashboard-agent-listen-port={_free_port()}",
        ]
        if head_port is not None:
            cmd += ["--head", f"--port={head_port}", f"--temp-dir={self.state.temp_dir}",
                    "--include-dashboard=false", f"--ray-client-server-port={_free_port()}",
                    f"--dashboard-port={_free_port()}"]
        else:
            cmd += [f"--address={self.state.address}"]
        log_path = state_dir / f"{name}.log"
        # Ray turns token auth on for `ray start` whenever ~/.ray/auth_token exists (any earlier
        # local `ray.init()` writes one), and then in-process clients without the token are refused.
        # This loopback dev cluster pins the mode so it behaves the same on every machine.
        env = dict(os.environ, RAY_AUTH_MODE="disabled")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env=env)
        return NodeState(name=name, pid=proc.pid, log_path=str(log_path))

    def _wait_for_nodes(self, count: int) -> None:
        assert self.state is not None
        deadline = time.monotonic() + self.config.start_timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            for node in self.state.nodes:
                if not _alive(node.pid):
                    tail = Path(node.log_path).read_text(errors="replace")[-2000:]
                    raise Unavailable(f"ray node {node.name} exited during start; log tail:\n{tail}")
            try:
                alive = count_alive_nodes(self.state.address)
                if alive >= count:
                    return
                last_error = f"{alive}/{count} nodes up"
            except Exception as exc:  # GCS not up yet
                last_error = str(exc)
            time.sleep(0.5)
        raise Unavailable(f"local cluster did not reach {count} nodes in "
                          f"{self.config.start_timeout_s:g}s ({last_error}); see logs in {self.config.state_path}")


def count_alive_nodes(address: str) -> int:
    """Alive nodes as seen by the head's GCS, without joining the cluster as a driver."""
    from ray._raylet import GcsClient

    client = GcsClient(address=address)
    nodes = client.get_all_node_info(timeout=2)
    return sum(1 for info in nodes.values() if info.state == 0)  # 0 = ALIVE


def load_state(state_dir: Path) -> ClusterState | None:
    path = Path(state_dir) / STATE_FILE
    if not path.exists():
        return None
    return ClusterState.from_json(path.read_text())


# -- CLI ---------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flint cluster", description="Local multi-node Ray cluster on one machine.")
    p.add_argument("--state-dir", default="", help="where the state file and node logs live")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a head and N worker nodes")
    up.add_argument("--workers", type=int, default=LocalClusterConfig.workers, help="Ray worker nodes (default %(default)s)")
    up.add_argument("--cpus-per-node", type=int, default=LocalClusterConfig.cpus_per_node,
                    help="CPUs each node offers to Ray (default %(default)s)")
    up.add_argument("--shards-per-node", type=int, default=LocalClusterConfig.shards_per_node,
                    help="shard slots (custom resource) per node (default %(default)s)")
    up.add_argument("--object-store-mb", type=int, default=LocalClusterConfig.object_store_mb,
                    help="object store size of each node in MB (default %(default)s)")
    sub.add_parser("down", help="stop the nodes started by `up`")
    sub.add_parser("status", help="show the nodes and whether they are alive")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "up":
            cfg = LocalClusterConfig(workers=args.workers, cpus_per_node=args.cpus_per_node,
                                     shards_per_node=args.shards_per_node,
                                     object_store_mb=args.object_store_mb, state_dir=args.state_dir)
            state = LocalCluster(cfg).start()
            print(f"local cluster up: {len(state.nodes)} nodes, address {state.address}")
            print(f"join it with: flint serve --ray-address {state.address}")
            return 0
        cfg = LocalClusterConfig(state_dir=args.state_dir)
        state = load_state(cfg.state_path)
        if state is None:
            print(f"no local cluster recorded in {cfg.state_path}")
            return 0 if args.command == "down" else 1
        if args.command == "down":
            LocalCluster(cfg).stop()
            print(f"local cluster at {state.address} stopped")
            return 0
        try:
            alive = count_alive_nodes(state.address)
        except Exception as exc:
            alive = -1
            print(f"head at {state.address} not reachable: {exc}")
        print(f"address {state.address}; alive nodes (GCS): {alive}")
        for node in state.nodes:
            print(f"  {node.name:5s} pid {node.pid:7d} {'alive' if _alive(node.pid) else 'DEAD'}  "
                  f"resource {node.resource}  log {node.log_path}")
        return 0 if alive == len(state.nodes) else 1
    except InvalidArgument as exc:
        print(f"flint cluster: {exc.message}", file=sys.stderr)
        return 2
    except Unavailable as exc:
        print(f"flint cluster: {exc.message}", file=sys.stderr)
        return 1
