"""flint on a 3-node local Ray cluster: two front-end workers, two engine replicas (a Ray Serve
deployment, one replica per node), all state shared through one Valkey.

- an interrupt sent to worker B stops a stream owned by worker A;
- a session's consecutive requests land on one replica and hit its prefix cache;
- killing a replica ends its streams with UNAVAILABLE and new requests go to the survivor.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
import ray
import redis.asyncio as aioredis
from support.services import TEST_CONTEXT_TOKENS, long_edit, start_worker_process, stop_worker_process

from flint.distributed.serve import APP_NAME, ServeDeploymentConfig, deploy
from flint.internal.v1 import engine_pb2
from flint.security.internal import EngineClient, resolve_token
from flint.replica.registry import ReplicaRegistry
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

KEY_PREFIX = "flint-multinode"


async def registered_replicas(redis_url: str, count: int, timeout_s: float = 60.0):
    redis = aioredis.Redis.from_url(redis_url)
    try:
        registry = ReplicaRegistry(redis, KEY_PREFIX)
        for _ in range(int(timeout_s / 0.2)):
            replicas = [r for r in await registry.list() if r.routable]
            if len(replicas) == count:
                return replicas
            await asyncio.sleep(0.2)
    finally:
        await redis.aclose()
    raise AssertionError(f"expected {count} routable replicas in Redis, saw {len(replicas)}")


@pytest.fixture(scope="module")
def stream_checkpoint(tmp_path_factory, bytelevel_tokenizer_file):
    """A demo-format model big enough (4 layers, d=256, ~3M parameters) that a 900-token edit streams for about
    a second: the tiny test model decodes 900 tokens in 0.1-0.4 s, and the replica-kill test must kill a
    replica while its stream is still running."""
    from support.checkpoints import VOCAB

    from flint.engine.demo import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("demo-stream"), layers=4, hidden=256, heads=4, kv_heads=2,
                           intermediate=768, vocab_size=VOCAB, max_position_embeddings=4096, seed=5,
                           tokenizer_from=bytelevel_tokenizer_file.parent)


@pytest.fixture(scope="module")
def two_replicas(cluster_ray, valkey_url, stream_checkpoint):
    from ray import serve

    cfg = ServeDeploymentConfig(
        redis_url=valkey_url, min_replicas=2, max_replicas=2, max_replicas_per_node=1, num_cpus=0.5,
        # no speculation: a random model's loops let an edit draft most of its 900 tokens, ending it sooner
        engine={"model": str(stream_checkpoint), "max_context_tokens": TEST_CONTEXT_TOKENS, "speculation": "off",
                "kv_cache_bytes": 1 << 24},
        replica={"key_prefix": KEY_PREFIX, "host": "127.0.0.1", "advertise_host": "127.0.0.1",
                 "heartbeat_interval_s": 0.5, "heartbeat_ttl_s": 2.0},
        drain_grace_s=5.0,
    )
    deploy(cfg)
    try:
        yield asyncio.run(registered_replicas(valkey_url, 2))
    finally:
        serve.delete(APP_NAME)
        serve.shutdown()


@pytest.fixture(scope="module")
def workers(two_replicas, valkey_url):
    started = []
    try:
        for name in ("mn-worker-a", "mn-worker-b"):
            started.append(start_worker_process(valkey_url, name, key_prefix=KEY_PREFIX))
        yield started
    finally:
        for w in started:
            stop_worker_process(w.process)


@pytest.fixture
async def stubs(workers):
    channels = [grpc.aio.insecure_channel(w.address) for w in workers]
    try:
        yield [flint_pb2_grpc.FlintStub(c) for c in channels]
    finally:
        for c in channels:
            await c.close()


async def test_replicas_run_on_different_nodes(two_replicas):
    from ray import serve

    handle = serve.get_deployment_handle("flint-engine", app_name=APP_NAME)
    seen: dict[str, str] = {}
    for _ in range(40):   # Serve routes each control call to some replica; ask until both answered
        info = await handle.info.remote()
        seen[info["replica_id"]] = info["node_id"]
        if len(seen) == 2:
            break
    assert set(seen) == {r.replica_id for r in two_replicas}
    assert len(set(seen.values())) == 2


async def test_interrupt_sent_to_worker_b_stops_stream_on_worker_a(stubs):
    worker_a, worker_b = stubs
    call = worker_a.Edit(long_edit("mn-interrupt", 900))
    messages = [await call.read(), await call.read()]
    assert [m.WhichOneof("kind") for m in messages] == ["accepted", "delta"]
    ack = await worker_b.Interrupt(pb.InterruptRequest(request_id="mn-interrupt"), timeout=30)
    # Bounded: a stream that does not end after the ack is a failure, not a hang.
    while (m := await asyncio.wait_for(call.read(), 30)) is not grpc.aio.EOF:
        messages.append(m)
    assert ack.was_running
    seqs = [m.delta.seq for m in messages if m.WhichOneof("kind") == "delta"]
    assert max(seqs) == ack.last_seq, "a delta arrived after the acknowledgement"
    assert messages[-1].final.finish_reason == pb.FINISH_REASON_INTERRUPTED


class Session:
    """A Session stream: one request at a time, read to its final."""

    def __init__(self, stub):
        self._out: asyncio.Queue = asyncio.Queue()
        self.call = stub.Session(self._requests())

    async def _requests(self):
        while (m := await self._out.get()) is not None:
            yield m

    async def open(self, session_id: str = "") -> str:
        self._out.put_nowait(pb.ClientMessage(open=pb.Open(session_id=session_id, client="pytest")))
        return (await asyncio.wait_for(self.call.read(), 30)).opened.session_id

    async def complete(self, request_id: str, prefix: str) -> pb.Final:
        self._out.put_nowait(pb.ClientMessage(complete=pb.CompleteRequest(
            request_id=request_id, prefix=prefix, sampling=pb.Sampling(max_tokens=4))))
        while True:
            m = await asyncio.wait_for(self.call.read(), 60)
            if m.WhichOneof("kind") == "error":
                raise AssertionError(f"{request_id}: {m.error.message}")
            if m.WhichOneof("kind") == "final":
                return m.final

    async def close(self) -> None:
        self._out.put_nowait(None)
        while await self.call.read() is not grpc.aio.EOF:
            pass


async def test_session_requests_stay_on_one_replica_and_hit_its_prefix_cache(stubs):
    code = "".join(f"def function_{i}(value):\n    return value * {i} + {i * 7}\n\n" for i in range(12))
    first = Session(stubs[0])
    session_id = await first.open()
    finals = [await first.complete("mn-keystroke-1", code)]
    finals.append(await first.complete("mn-keystroke-2", code + "def next_"))
    await first.close()
    # The same session reattached on the other front-end worker keeps its replica too.
    second = Session(stubs[1])
    assert await second.open(session_id) == session_id
    finals.append(await second.complete("mn-keystroke-3", code + "def next_one("))
    await second.close()

    assert len({f.replica_id for f in finals}) == 1, [f.replica_id for f in finals]
    assert finals[0].cached_prompt_tokens == 0
    assert finals[1].cached_prompt_tokens > 0 and finals[2].cached_prompt_tokens > 0


async def running_on(replica) -> int:
    async with grpc.aio.insecure_channel(replica.address) as channel:   # the deployment's token, as a front-end
        report = await EngineClient(channel, resolve_token()).Load(engine_pb2.LoadRequest())
    return report.running


async def test_killing_a_replica_ends_its_streams_unavailable_and_new_requests_go_to_survivor(
        stubs, two_replicas, valkey_url):
    # Runs last in this module: it kills one of the two replicas.
    call = stubs[0].Edit(long_edit("mn-doomed", 900))
    assert (await call.read()).WhichOneof("kind") == "accepted"
    assert (await call.read()).WhichOneof("kind") == "delta"
    counts = [await running_on(r) for r in two_replicas]
    assert sorted(counts) == [0, 1], counts
    doomed = two_replicas[counts.index(1)]
    survivor = two_replicas[counts.index(0)]

    [actor_name] = [a for a in ray.util.list_named_actors(all_namespaces=True)
                    if a["name"].endswith(doomed.replica_id.removeprefix("serve-"))]
    ray.kill(ray.get_actor(actor_name["name"], namespace=actor_name["namespace"]), no_restart=True)

    with pytest.raises(grpc.aio.AioRpcError) as info:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert info.value.details(), "the status carries a message"

    # The dead replica drops out of routing when its Redis heartbeat expires (heartbeat_ttl_s=2).
    # Until then a request routed to it fails fast with a retryable UNAVAILABLE, like the stream above.
    assert [r.replica_id for r in await registered_replicas(valkey_url, 1)] == [survivor.replica_id]
    for i in range(3):
        final = [m async for m in stubs[1].Complete(pb.CompleteRequest(
            request_id=f"mn-after-kill-{i}", prefix="x = ", sampling=pb.Sampling(max_tokens=2)))][-1].final
        assert final.replica_id == survivor.replica_id
