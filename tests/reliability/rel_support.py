"""Support of the reliability tests: real Valkey, real gRPC servers, a paced engine.

Front-end workers (in-process `FrontendWorker`s, or `python -m
flint.frontend.worker` processes when a test kills one) and engine replica
servers (`ReplicaServer`, real internal gRPC + Redis registry) are the real
ones. The engine inside a replica is `PacedEngine`: a deterministic text
generator that emits one token every `token_interval_s`. Fault tests need a
stream that is reliably still running when a process is killed, and exact
expected text to prove "nothing lost, nothing twice"; the model is covered by
the engine and serving tests. Every test gets its own Redis key prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import asdict

from flint.engine import types as t

MODEL = "paced"


class PacedEngine:
    """The AsyncEngine surface a ReplicaServer needs, generating deterministic words at a fixed pace."""

    model_name = MODEL
    max_context_tokens = 4096

    def __init__(self, token_interval_s: float = 0.01, default_max_tokens: int = 16, max_running: int = 64):
        self.token_interval_s = token_interval_s
        self.default_max_tokens = default_max_tokens
        self._slots = asyncio.Semaphore(max_running)
        self.waiting = 0
        self.running: set[str] = set()
        self.finished: list[str] = []
        self.cancelled: list[str] = []      # generator closed before its final: engine work freed
        self.namespaces: dict[str, str] = {}  # request id -> prefix-cache namespace it ran in

    @staticmethod
    def words(request: t.GenerateRequest, count: int) -> list[str]:
        basis = f"{request.prefix}|{request.suffix}|{request.code}|{request.instruction}|{request.sampling.seed}"
        digest = int(hashlib.sha256(basis.encode()).hexdigest(), 16)
        return [f"w{(digest >> (i % 200)) % 997}é " for i in range(count)]

    async def generate(self, request: t.GenerateRequest):
        max_tokens = request.sampling.max_tokens or self.default_max_tokens
        words = self.words(request, max_tokens)
        rid = request.request_id
        self.namespaces[rid] = request.cache_namespace
        completed = False
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.running.add(rid)
        try:
            yield t.Started(rid, prompt_tokens=len(request.prefix.split()) + 1)
            for i, word in enumerate(words):
                await asyncio.sleep(self.token_interval_s)
                yield t.Delta(rid, seq=request.seq_offset + i + 1, text=word, token_count=1)
            completed = True
            yield t.Final(rid, seq=request.seq_offset + len(words) + 1, finish_reason=t.FinishReason.LENGTH,
                          prompt_tokens=len(request.prefix.split()) + 1, completion_tokens=len(words))
        finally:
            self._slots.release()
            self.running.discard(rid)
            (self.finished if completed else self.cancelled).append(rid)

    async def abort(self, request_id: str) -> bool:
        return request_id in self.running

    def load(self) -> t.LoadInfo:
        return t.LoadInfo(running=len(self.running), waiting=self.waiting, kv_used_fraction=0.0,
                          max_context_tokens=self.max_context_tokens)


def _words_for(prefix: str, max_tokens: int) -> list[str]:
    return PacedEngine.words(t.GenerateRequest("x", prefix=prefix), max_tokens)


PacedEngine.words_for = staticmethod(_words_for)


def expected_text(prefix: str, max_tokens: int, seed: int | None = None) -> str:
    return "".join(PacedEngine.words(t.GenerateRequest("x", prefix=prefix, sampling=t.SamplingParams(seed=seed)),
                                     max_tokens))


class Cluster:
    """Replicas and front-end workers of one test, all stopped at the end."""

    def __init__(self, redis_url: str, key_prefix: str):
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.replicas = []      # (ReplicaServer, PacedEngine)
        self.workers = []       # FrontendWorker
        self.processes = []     # (worker_id, address, Popen)

    async def add_replica(self, replica_id: str = "", admission: dict | None = None, **engine_kwargs):
        from flint.config import ReplicaConfig
        from flint.replica.server import ReplicaServer

        engine = PacedEngine(**engine_kwargs)
        server = ReplicaServer(engine, ReplicaConfig(redis_url=self.redis_url, key_prefix=self.key_prefix,
                                                     replica_id=replica_id, heartbeat_interval_s=0.2,
                                                     heartbeat_ttl_s=1.0, grace_period_s=0.5,
                                                     admission=admission or {}))
        await server.start()
        self.replicas.append((server, engine))
        return server, engine

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

    async def add_worker_process(self, worker_id: str, **overrides) -> str:
        """A front-end worker in its own process (so a test can kill it); returns its address."""
        config = self.frontend_config(worker_id, **overrides)
        proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config",
                                 json.dumps(asdict(config))], stdout=subprocess.PIPE, text=True)
        line = await asyncio.to_thread(proc.stdout.readline)
        try:
            ready = json.loads(line)
            assert ready["event"] == "listening", ready
        except Exception:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"front-end worker did not start: {line!r}") from None
        address = f"127.0.0.1:{ready['port']}"
        self.processes.append((worker_id, address, proc))
        return address

    async def add_replica_process(self, replica_id: str, token_interval_s: float = 0.01) -> str:
        """An engine replica (paced engine, real ReplicaServer) in its own process, so a test can kill it."""
        proc = subprocess.Popen([sys.executable, __file__, "--redis-url", self.redis_url, "--key-prefix",
                                 self.key_prefix, "--replica-id", replica_id, "--token-interval-s",
                                 str(token_interval_s)], stdout=subprocess.PIPE, text=True)
        line = await asyncio.to_thread(proc.stdout.readline)
        try:
            address = json.loads(line)["address"]
        except Exception:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"replica process did not start: {line!r}") from None
        self.processes.append((replica_id, address, proc))
        return address

    def stop_process(self, name: str) -> subprocess.Popen:
        """SIGTERM: a graceful drain (the process finishes its streams within its grace period)."""
        for wid, _, proc in self.processes:
            if wid == name and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                return proc
        raise KeyError(name)

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, _, proc in self.processes if proc.poll() is None}

    def kill_process(self, worker_id: str) -> None:
        for wid, _, proc in self.processes:
            if wid == worker_id and proc.poll() is None:
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
        for server, _ in self.replicas:
            await server.stop(0.2)


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
    """`python rel_support.py --redis-url U --key-prefix P --replica-id R`: a paced replica until SIGTERM."""
    import argparse

    from flint.config import ReplicaConfig
    from flint.replica.server import ReplicaServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--key-prefix", required=True)
    parser.add_argument("--replica-id", required=True)
    parser.add_argument("--token-interval-s", type=float, default=0.01)
    args = parser.parse_args()

    async def run() -> None:
        server = ReplicaServer(PacedEngine(token_interval_s=args.token_interval_s), ReplicaConfig(
            redis_url=args.redis_url, key_prefix=args.key_prefix, replica_id=args.replica_id,
            heartbeat_interval_s=0.2, heartbeat_ttl_s=1.0, grace_period_s=0.5))
        address = await server.start()
        print(json.dumps({"address": address}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0.5)

    asyncio.run(run())


if __name__ == "__main__":
    main_replica_process()
