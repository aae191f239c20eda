"""A frozen engine replica (SIGSTOP of its real process) mid-stream: the front-end notices within seconds, the
stream ends UNAVAILABLE, and the client resumes the request on a live replica with nothing lost or repeated.

Each of the two watches is tested alone: the hop's keepalive pings (the probe effectively off), and the
stall probe (keepalive effectively off), on both engine transports (the engine link's pings, the gRPC
channel's keepalive). Before them the stream stayed silent for as long as the replica
was stopped (38 s in the issue's run). The timing budget (3 s) is measured by `flint bench cluster`.
"""

import asyncio
import os
import signal
import time

import grpc
import pytest

from rel_support import eventually
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

NEVER_S = 3600.0
WATCHES = {
    "keepalive": {"engine_stall_s": NEVER_S},
    "stall probe": {"engine_keepalive_time_s": NEVER_S, "engine_keepalive_timeout_s": NEVER_S},
}


@pytest.mark.parametrize("transport", ["link", "grpc"])
@pytest.mark.parametrize("watch", list(WATCHES))
async def test_a_frozen_replica_ends_its_streams_unavailable_and_the_client_resumes_elsewhere(
        cluster, reference, watch, transport):
    tokens = 600
    want = await asyncio.to_thread(reference.run, "frozen", tokens)
    await cluster.add_replica_process("frozen")
    pid = cluster.pids()["frozen"]
    worker = await cluster.add_worker("watch", liveness=WATCHES[watch], engine_transport=transport)
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        call = stub.Complete(pb.CompleteRequest(request_id="frozen-1", prefix="frozen",
                                                sampling=pb.Sampling(max_tokens=tokens)))
        messages = []
        while len([m for m in messages if m.WhichOneof("kind") == "delta"]) < 2:
            messages.append(await asyncio.wait_for(call.read(), 60))
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while (m := await asyncio.wait_for(call.read(), 20)) is not grpc.aio.EOF:
                    messages.append(m)
            detect_s = time.monotonic() - stopped
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            assert "Resume" in err.value.details()
            assert detect_s < 10, detect_s

            # The client resumes it elsewhere: a live replica joins, the frozen one's heartbeat has expired.
            _, engine = await cluster.add_replica("live")
            deltas = [m.delta for m in messages if m.WhichOneof("kind") == "delta"]
            resumed = [m async for m in stub.Resume(pb.ResumeRequest(request_id="frozen-1", last_seq=deltas[-1].seq),
                                                    timeout=120)]
            deltas += [m.delta for m in resumed if m.WhichOneof("kind") == "delta"]
            assert [d.seq for d in deltas] == list(range(1, len(deltas) + 1))
            assert "".join(d.text for d in deltas) == want.text
            assert resumed[-1].final.completion_tokens == tokens
            await eventually(lambda: engine.load().running == 0)
        finally:
            os.kill(pid, signal.SIGCONT)
