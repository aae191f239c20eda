"""Support of the reliability tests: real Valkey, real gRPC servers, the real engine on a tiny checkpoint.

Front-end workers (in-process `FrontendWorker`s, or `python -m
flint.frontend.worker` processes when a test kills one) and engine replicas
(`AsyncEngine` + `ReplicaServer` in this process, or `ReplicaHost` in a
process of its own when a test kills one) are the ones users run. The model
is a tiny random Qwen2-format checkpoint written by `make_checkpoint` and read
through the real loader.

Fault tests need a stream that is still running when a process is killed, and
exact expected text to prove "nothing lost, nothing twice":
- the checkpoint's output rows of special tokens are zero, so their logit is
  0 while the largest of ~500 random logits is always positive: greedy
  decoding never picks EOS or a template stop token and every stream runs to
  its `max_tokens` (a stream is made long by asking for more tokens; nothing
  is slowed down);
- `Reference` runs the same request alone and uninterrupted on an in-process
  engine of the same checkpoint; greedy decoding makes that the text a
  client must receive, whatever failed in between.
Every test gets its own Redis key prefix.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from flint.engine import types as t

# Replicas in these tests: KV for 64K tokens (a long stream needs its max_tokens reserved at admission).
ENGINE = {"kv_cache_bytes": 1 << 25}


def make_checkpoint(path: Path, tokenizer_dir: Path) -> Path:
    """A ~150K-parameter Qwen2 checkpoint (HF format) whose greedy output never stops before max_tokens."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from flint.engine import demo
    from flint.engine.tokenizer import Tokenizer

    demo.make_checkpoint(path, layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128, vocab_size=512,
                         max_position_embeddings=16384, seed=0, tie_word_embeddings=False,
                         tokenizer_from=tokenizer_dir)
    file = path / "model.safetensors"
    with safe_open(file, "pt") as f:
        metadata = f.metadata()
    weights = load_file(file)
    weights["lm_head.weight"][sorted(Tokenizer.from_dir(path).special_ids)] = 0.0  # [n_special, hidden]
    save_file(weights, file, metadata=metadata)
    return path


def engine_config(checkpoint: Path, **overrides):
    from flint.engine.config import EngineConfig

    return EngineConfig.from_dict({**ENGINE, **overrides}, model=str(checkpoint))


@dataclass(frozen=True)
class Expected:
    text: str
    deltas: int                  # Delta events the engine emitted (the relay may merge them further)
    completion_tokens: int
    finish_reason: t.FinishReason


class Reference:
    """What a request must produce: the same request run alone, uninterrupted, on an in-process engine."""

    def __init__(self, checkpoint: Path):
        self._checkpoint = checkpoint
        self._engine = None
        self._lock = threading.Lock()
        self._memo: dict[tuple, Expected] = {}
        self._count = 0

    def run(self, prefix: str, max_tokens: int) -> Expected:
        key = (prefix, max_tokens)
        with self._lock:
            if key not in self._memo:
                if self._engine is None:
                    from flint.engine.engine import Engine

                    self._engine = Engine.from_config(engine_config(self._checkpoint))
                self._count += 1
                self._engine.add_request(t.GenerateRequest(f"ref-{self._count}", prefix=prefix,
                                                           sampling=t.SamplingParams(max_tokens=max_tokens)))
                events = self._engine.run_until_done()
                deltas = [e for e in events if isinstance(e, t.Delta)]
                [final] = [e for e in events if isinstance(e, t.Final)]
                self._memo[key] = Expected("".join(d.text for d in deltas), len(deltas), final.completion_tokens,
                                           final.finish_reason)
            return self._memo[key]

    def text(self, prefix: str, max_tokens: int) -> str:
        return self.run(prefix, max_tokens).text

    async def atext(self, prefix: str, max_tokens: int) -> str:
        """`text` off the event loop (the servers of a test may share the loop)."""
        return (await asyncio.to_thread(self.run, prefix, max_tokens)).text


def aborts(engine) -> float:
    """Requests the engine aborted so far (interrupt, client gone, deadline): its Prometheus counter."""
    metrics = engine.metrics
    return metrics.registry.get_sample_value("flint_engine_aborts_total", {"model": engine.model_name}) or 0.0


def engine_freed_everything(engine) -> bool:
    """Nothing running or waiting, and every KV block free once the prefix cache is dropped."""
    load = engine.load()
    return load.running == 0 and load.waiting == 0 and engine.no_leaks()   # between two steps


class Cluster:
    """Replicas and front-end workers of one test, all stopped at the end."""

    def __init__(self, redis_url: str, key_prefix: str, checkpoint: Path):
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.checkpoint = checkpoint
        self.replicas = []      # (ReplicaServer, AsyncEngine)
        self.workers = []       # FrontendWorker
        self.processes = []     # (name, address, Popen)

    def replica_config(self, replica_id: str, admission: dict | None = None):
        from flint.config import ReplicaConfig

        return ReplicaConfig(redis_url=self.redis_url, key_prefix=self.key_prefix, replica_id=replica_id,
                             heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0, grace_period_s=0.5,
                             admission=admission or {})

    async def add_replica(self, replica_id: str = "", admission: dict | None = None, **engine):
        """An engine replica in this process: the real engine (its step thread) behind a real ReplicaServer."""
        from flint.engine.async_engine import AsyncEngine
        from flint.replica.server import ReplicaServer

        async_engine = await asyncio.to_thread(AsyncEngine.from_config, engine_config(self.checkpoint, **engine))
        await async_engine.start()
        server = ReplicaServer(async_engine, self.replica_config(replica_id, admission))
        self.replicas.append((server, async_engine))
        await server.start()
        return server, async_engine

    def frontend_config(self, worker_id: str, **overrides):
        from flint.config import FrontendConfig

        journal = {"worker_ttl_s": 1.0, "poll_interval_ms": 100.0, **overrides.pop("journal", {})}
        values = {"port": 0, "reuse_port": False, "grace_period_s": 1.0, **overrides}
        return FrontendConfig(redis_url=self.redis_url, key_prefix=self.key_prefix, worker_id=worker_id,
                              journal=journal, **values)

    async def add_worker(self, worker_id: str, **overrides):
        from flint.frontend.server import FrontendWorker

        worker = FrontendWorker(self.frontend_config(worker_id, **overrides))
        await worker.start()
        self.workers.append(worker)
        return worker

    async def _spawn(self, name: str, argv: list[str]) -> tuple[str, dict]:
        """Start a process that prints one JSON line when it listens; returns (address, that line)."""
        proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE, text=True)
        line = await asyncio.to_thread(proc.stdout.readline)
        try:
            ready = json.loads(line)
            address = ready["address"] if "address" in ready else f"127.0.0.1:{ready['port']}"
        except Exception:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{name} did not start: {line!r}") from None
        self.processes.append((name, address, proc))
        return address, ready

    async def add_worker_process(self, worker_id: str, **overrides) -> str:
        """A front-end worker in its own process (so a test can kill it); returns its address."""
        config = self.frontend_config(worker_id, **overrides)
        address, ready = await self._spawn(worker_id, ["-m", "flint.frontend.worker", "--config",
                                                       json.dumps(asdict(config))])
        assert ready["event"] == "listening", ready
        return address

    async def add_replica_process(self, replica_id: str, **engine) -> str:
        """An engine replica (`ReplicaHost`: real engine + ReplicaServer) in its own process, so a test can kill it."""
        address, _ = await self._spawn(replica_id, [__file__, "--checkpoint", str(self.checkpoint), "--redis-url",
                                                    self.redis_url, "--key-prefix", self.key_prefix,
                                                    "--replica-id", replica_id, "--engine", json.dumps(engine)])
        return address

    def stop_process(self, name: str) -> subprocess.Popen:
        """SIGTERM: a graceful drain (the process finishes its streams within its grace period)."""
        for pname, _, proc in self.processes:
            if pname == name and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                return proc
        raise KeyError(name)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, _, proc in self.processes if proc.poll() is None}

    def kill_process(self, name: str) -> None:
        """SIGKILL: no drain, no goodbye."""
        for pname, _, proc in self.processes:
            if pname == name and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()

    async def close(self) -> None:
        for worker in self.workers:
            await worker.stop(0.5)
        for _, _, proc in self.processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for server, engine in self.replicas:
            await server.stop(0.2)
            await engine.stop()


def open_session(stub):
    """A Session call fed from a queue: (call, queue); put ClientMessages in, None to half-close."""
    outgoing: asyncio.Queue = asyncio.Queue()

    async def requests():
        while (message := await outgoing.get()) is not None:
            yield message

    return stub.Session(requests()), outgoing


async def eventually(predicate, timeout_s: float = 10.0, interval_s: float = 0.05):
    """Wait until `predicate()` (sync or async) is true; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)


def main_replica_process() -> None:
    """`python rel_support.py --checkpoint C --redis-url U --key-prefix P --replica-id R`: a replica until SIGTERM."""
    import argparse

    from flint.replica.host import ReplicaHost

    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key-prefix", required=True)
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--engine", default="{}", help="EngineConfig overrides, JSON")
    args = parser.parse_args()
    cluster = Cluster(args.redis_url, args.key_prefix, Path(args.checkpoint))

    async def run() -> None:
        host = ReplicaHost(engine_config(cluster.checkpoint, **json.loads(args.engine)),
                           cluster.replica_config(args.replica_id), exit_on_broken=True)  # as under Ray
        address = await host.start()
        print(json.dumps({"address": address}), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await host.stop(0.5)

    asyncio.run(run())


if __name__ == "__main__":
    main_replica_process()
