"""A client that goes away mid-stream, without a word, frees its engine slot and leaves the request recorded as
interrupted: a unary-stream Complete and a Session stream.

The stream has to outlast the disconnect. On the serving tests' model (1,024-token context) a 900-token edit
has its drafts all accepted and ran to its end before the disconnect reached the engine once the fp32 Linears
got faster. Here the model's greedy output never stops before max_tokens and its context holds 16,000 tokens:
seconds of decoding (rel_support.py).
"""

import asyncio

import grpc
import msgpack
import redis.asyncio as aioredis

from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc
from rel_support import aborts, engine_freed_everything, eventually

LONG = 16_000


def _complete(request_id: str) -> pb.CompleteRequest:
    return pb.CompleteRequest(request_id=request_id, prefix="p", sampling=pb.Sampling(max_tokens=LONG))


async def _recorded_state(cluster, request_id: str) -> str | None:
    redis = aioredis.Redis.from_url(cluster.redis_url)
    try:
        raw = await redis.get(f"{cluster.key_prefix}:req:{request_id}")
    finally:
        await redis.aclose()
    return None if raw is None else msgpack.unpackb(raw)["state"]


async def _state_is(cluster, request_id: str, state: str) -> bool:
    return await _recorded_state(cluster, request_id) == state


async def test_client_disconnect_mid_stream_frees_the_engine_slot(cluster):
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    aborted_before = aborts(engine)
    channel = grpc.aio.insecure_channel(worker.address)
    call = flint_pb2_grpc.FlintStub(channel).Complete(_complete("gone-1"))
    assert (await call.read()).WhichOneof("kind") == "accepted"
    assert (await call.read()).WhichOneof("kind") == "delta"
    assert engine.load().running == 1
    await channel.close()                      # the client goes away without a word
    # the engine call was aborted (not run to its 16,000 tokens) and nothing is left running
    await eventually(lambda: aborts(engine) > aborted_before and engine_freed_everything(engine), 30)
    assert await eventually(lambda: _state_is(cluster, "gone-1", "interrupted"), 10)


async def test_session_client_disconnect_frees_the_engine_slot(cluster):
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    aborted_before = aborts(engine)
    channel = grpc.aio.insecure_channel(worker.address)

    async def requests():
        yield pb.ClientMessage(complete=_complete("gone-session"))
        await asyncio.Event().wait()           # keep the stream open, as an editor does

    call = flint_pb2_grpc.FlintStub(channel).Session(requests())
    assert (await call.read()).WhichOneof("kind") == "accepted"
    assert (await call.read()).WhichOneof("kind") == "delta"
    await channel.close()
    await eventually(lambda: aborts(engine) > aborted_before and engine_freed_everything(engine), 30)
