"""Exact token accounting and max_tokens limits, from the engine to a gRPC and an HTTP client.

Every generated token is counted once: in one delta's token_count or in the
Final's withheld_tokens, so a client's sum equals Final.completion_tokens,
also when tokens decode to no text (the demo checkpoint's greedy FIM output
is special tokens only) and when a stop string, which is never sent, takes
whole tokens. max_tokens beyond the context left after the prompt is refused
with INVALID_ARGUMENT naming the limit, never silently reduced.
"""

import secrets

import aiohttp
import grpc
import pytest

from rel_support import Cluster
from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.types import Delta, Final, FinishReason, GenerateRequest, SamplingParams
from flint.errors import InvalidArgument
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

PREFIX = "def add(a, b):\n    return "
SEEDED = dict(temperature=1.0, seed=2)   # the demo checkpoint writes text only when sampled
CONTEXT = 1024


@pytest.fixture(scope="module")
def engine(demo_checkpoint):
    return Engine.from_config(EngineConfig.from_dict(dict(model=str(demo_checkpoint), kv_cache_bytes=16 << 20,
                                                          block_size=8, max_context_tokens=CONTEXT)))


def run(engine: Engine, **sampling) -> tuple[list[Delta], Final]:
    rid = f"r{secrets.token_hex(3)}"
    engine.add_request(GenerateRequest(rid, prefix=PREFIX, sampling=SamplingParams(**sampling)))
    events = [e for e in engine.run_until_done() if e.request_id == rid]
    *deltas, final = events
    assert isinstance(final, Final) and all(isinstance(d, Delta) for d in deltas)
    return deltas, final


def stop_of(deltas) -> tuple[str, int, str]:
    """A stop string made of two whole deltas' text that first occurs where they start: (stop, tokens those two
    deltas cover, the text before it)."""
    text = "".join(d.text for d in deltas)
    offset = 0
    for a, b in zip(deltas, deltas[1:]):
        stop = a.text + b.text
        if offset and len(stop) >= 3 and stop.isprintable() and text.find(stop) == offset:
            return stop, a.token_count + b.token_count, text[:offset]
        offset += len(a.text)
    raise AssertionError(f"no usable stop string in {text!r}")


def test_tokens_that_decode_to_no_text_are_counted_in_the_final(engine):
    deltas, final = run(engine, max_tokens=32)
    assert final.completion_tokens == 32
    assert final.withheld_tokens > 0, "the greedy FIM output should be special tokens, which have no text"
    assert sum(d.token_count for d in deltas) + final.withheld_tokens == final.completion_tokens


def test_the_tokens_of_a_withheld_stop_string_are_counted_in_the_final(engine):
    deltas, _ = run(engine, max_tokens=32, **SEEDED)
    stop, stop_tokens, before = stop_of(deltas)
    deltas, final = run(engine, max_tokens=32, stop=(stop,), **SEEDED)
    assert final.finish_reason is FinishReason.STOP
    assert "".join(d.text for d in deltas) == before
    assert final.withheld_tokens == stop_tokens
    assert sum(d.token_count for d in deltas) + final.withheld_tokens == final.completion_tokens


def test_max_tokens_beyond_the_context_left_by_the_prompt_is_refused_with_the_limit(engine):
    prompt_tokens = len(engine.prepare(GenerateRequest("p", prefix=PREFIX)).prompt_ids)
    room = CONTEXT - prompt_tokens
    with pytest.raises(InvalidArgument, match=rf"at most {room}\b"):
        run(engine, max_tokens=room + 1)
    _, final = run(engine, max_tokens=room, **SEEDED)   # exactly the room left is allowed
    assert final.completion_tokens <= room
    assert engine.no_leaks()


# ------------------------------------------------------------------ through a front-end worker


@pytest.fixture
async def demo_cluster(valkey_url, demo_checkpoint):
    c = Cluster(valkey_url, f"ta{secrets.token_hex(3)}", demo_checkpoint)
    try:
        await c.add_replica(max_context_tokens=CONTEXT)
        yield c
    finally:
        await c.close()


async def complete(stub, **sampling) -> tuple[list[pb.Delta], pb.Final]:
    messages = [m async for m in stub.Complete(pb.CompleteRequest(prefix=PREFIX, sampling=pb.Sampling(**sampling)))]
    deltas = [m.delta for m in messages if m.WhichOneof("kind") == "delta"]
    [final] = [m.final for m in messages if m.WhichOneof("kind") == "final"]
    return deltas, final


async def test_a_grpc_clients_token_counts_sum_to_completion_tokens(demo_cluster):
    worker = await demo_cluster.add_worker("count")
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        deltas, final = await complete(stub, max_tokens=32)            # tokens without text
        assert final.completion_tokens == 32 and final.withheld_tokens > 0
        assert sum(d.token_count for d in deltas) + final.withheld_tokens == 32

        deltas, _ = await complete(stub, max_tokens=32, **SEEDED)
        stop, stop_tokens, before = stop_of(deltas)
        deltas, final = await complete(stub, max_tokens=32, stop=[stop], **SEEDED)   # a withheld stop string
        assert final.finish_reason == pb.FINISH_REASON_STOP and "".join(d.text for d in deltas) == before
        assert final.withheld_tokens == stop_tokens
        assert sum(d.token_count for d in deltas) + final.withheld_tokens == final.completion_tokens


async def test_max_tokens_beyond_the_context_is_invalid_argument_on_grpc_and_http(demo_cluster):
    worker = await demo_cluster.add_worker("limits", http_port=0)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        accepted = await anext(aiter(stub.Complete(pb.CompleteRequest(prefix=PREFIX,
                                                                      sampling=pb.Sampling(max_tokens=1)))))
        room = CONTEXT - accepted.accepted.prompt_tokens
        for max_tokens in (room + 1, CONTEXT):   # over by one, and the whole context (passes the edge's check)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await complete(stub, max_tokens=max_tokens)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"at most {room}" in err.value.details()
        _, final = await complete(stub, max_tokens=room, **SEEDED)
        assert final.completion_tokens <= room
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{worker.http_port}/v1/completions",
                             json={"prompt": PREFIX, "max_tokens": room + 1}) as response:
            body = await response.json()
            assert response.status == 400, body
            assert f"at most {room}" in body["error"]["message"]
