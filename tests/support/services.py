"""Fixtures that start real Valkey, Ray, engine replicas and front-end workers.

Session-scoped and always shut down: one embedded Valkey, one small local
Ray instance (num_cpus=2, no dashboard), one engine replica (a Ray actor
serving the tiny demo-format checkpoint on its internal gRPC port) and two
front-end worker processes on 127.0.0.1 port 0, started exactly as
`flint serve` starts them (`python -m flint.frontend.worker`).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass

import pytest

# Small enough that a "prompt longer than the context" test prompt is short.
TEST_CONTEXT_TOKENS = 1024


@pytest.fixture(scope="session")
def valkey_url():
    from flint.valkey import EmbeddedValkey

    server = EmbeddedValkey()
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclass(frozen=True)
class Replica:
    actor: object
    address: str
    model_dir: str
    max_context_tokens: int


@pytest.fixture(scope="session")
def engine_replica(valkey_url, ray_local, demo_checkpoint):
    from flint.config import ReplicaConfig
    from flint.engine.config import EngineConfig
    from flint.replica.host import start_replica_actors, stop_replica_actors

    engine_config = EngineConfig.from_dict({"max_context_tokens": TEST_CONTEXT_TOKENS, "kv_cache_bytes": 1 << 24},
                                           model=str(demo_checkpoint))
    [(actor, address)] = start_replica_actors(engine_config, ReplicaConfig(redis_url=valkey_url), count=1,
                                              num_cpus=1, timeout_s=120)
    try:
        yield Replica(actor, address, str(demo_checkpoint), TEST_CONTEXT_TOKENS)
    finally:
        stop_replica_actors([actor], grace_s=1.0)


@dataclass(frozen=True)
class Worker:
    worker_id: str
    address: str
    process: subprocess.Popen


def start_worker_process(redis_url: str, worker_id: str, **overrides) -> Worker:
    """A front-end worker process on 127.0.0.1 port 0, as `flint serve` runs it."""
    from flint.config import FrontendConfig

    config = FrontendConfig(redis_url=redis_url, worker_id=worker_id, port=0, reuse_port=False, **overrides)
    proc = subprocess.Popen([sys.executable, "-m", "flint.frontend.worker", "--config", json.dumps(asdict(config))],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    try:
        ready = json.loads(line)
        assert ready["event"] == "listening", ready
    except Exception:
        stop_worker_process(proc)
        raise RuntimeError(f"front-end worker did not start: {line!r}") from None
    return Worker(worker_id, f"127.0.0.1:{ready['port']}", proc)


def stop_worker_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def frontend_workers(valkey_url, engine_replica):
    """Two front-end worker processes (A and B) sharing Redis and the engine replica."""
    workers = []
    try:
        for name in ("worker-a", "worker-b"):
            workers.append(start_worker_process(valkey_url, name))
        yield workers
    finally:
        for worker in workers:
            stop_worker_process(worker.process)


@pytest.fixture
async def flint_stub(frontend_workers):
    """A flint.v1.Flint stub connected to worker A (channel closed after the test)."""
    import grpc

    from flint.v1 import flint_pb2_grpc

    async with grpc.aio.insecure_channel(frontend_workers[0].address) as channel:
        yield flint_pb2_grpc.FlintStub(channel)


@pytest.fixture
async def flint_stubs(frontend_workers):
    """Stubs for worker A and worker B."""
    import grpc

    from flint.v1 import flint_pb2_grpc

    channels = [grpc.aio.insecure_channel(w.address) for w in frontend_workers]
    try:
        yield [flint_pb2_grpc.FlintStub(c) for c in channels]
    finally:
        for channel in channels:
            await channel.close()


# The tiny random checkpoint decodes FIM greedily into special tokens only (no text) and
# samples EOS early, but a greedy *edit* streams "\n" deltas until max_tokens: tests that
# need a long stream use LONG_EDIT; tests that need FIM text use SEEDED sampling.
SEEDED = dict(temperature=1.0, seed=2)


def long_edit(request_id: str, max_tokens: int = 900):
    """An edit request that streams deltas (about two tokens each) until `max_tokens`."""
    from flint.v1 import flint_pb2 as pb

    return pb.EditRequest(request_id=request_id, code="x = 1\ny = 2\n", instruction="rename x to total",
                          sampling=pb.Sampling(max_tokens=max_tokens))


async def collect(call) -> list:
    """All ServerMessages of a server-streaming call."""
    return [message async for message in call]


def kinds(messages) -> list[str]:
    return [m.WhichOneof("kind") for m in messages]


def delta_text(messages) -> str:
    return "".join(m.delta.text for m in messages if m.WhichOneof("kind") == "delta")


async def routable_replicas(redis_url: str, key_prefix: str) -> dict[str, str]:
    """replica id -> address of the routable replicas in the Redis registry under `key_prefix`."""
    import redis.asyncio as aioredis

    from flint.replica.registry import ReplicaRegistry

    redis = aioredis.Redis.from_url(redis_url)
    try:
        return {r.replica_id: r.address for r in await ReplicaRegistry(redis, key_prefix).list() if r.routable}
    finally:
        await redis.aclose()


async def wait_for(predicate, what: str, timeout_s: float = 120.0, interval_s: float = 0.2):
    """Poll the async `predicate` until it returns something truthy (returned); fail after `timeout_s`."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
