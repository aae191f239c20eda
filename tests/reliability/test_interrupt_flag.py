"""A cross-worker interrupt whose pub/sub message is lost still stops the stream: the owner polls the flag key.

The stream has to outlast the poll: on the serving tests' model (1,024-token context) an edit's
drafts are all accepted, and 900 tokens ran in 49 ms on a fast CPU, under one 50 ms poll. Here the
model's greedy output never stops before max_tokens and its context holds 16,000 tokens: seconds of
decoding (rel_support.py).
"""

from flint.client import FlintClient, RetryPolicy
from flint.v1 import flint_pb2 as pb
from rel_support import engine_freed_everything, eventually

LONG = 16_000


async def test_flag_key_stops_the_stream_when_the_pubsub_message_is_lost(cluster):
    _, engine = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", flag_poll_interval_ms=50.0)
    async with FlintClient(worker.address, retry=RetryPolicy(max_attempts=1)) as client:
        stream = client.complete("flagged", max_tokens=LONG, request_id="flagged")
        messages = [await stream.__anext__(), await stream.__anext__()]
        assert [m.WhichOneof("kind") for m in messages] == ["accepted", "delta"]
        # What an interrupting worker writes besides its pub/sub message; no message is published here.
        await worker.servicer.store.set_interrupt_flag("flagged")
        messages += [m async for m in stream]
    final = messages[-1].final
    assert final.finish_reason == pb.FINISH_REASON_INTERRUPTED
    assert final.completion_tokens < LONG
    await eventually(lambda: engine_freed_everything(engine), 30)
