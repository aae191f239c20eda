"""Routing with real replicas: a worker weighs its own in-flight engine calls, so a burst spreads at once.

Registry loads are a heartbeat old and the same for every worker; a burst of
new requests that all saw the same idle snapshot must still not land on one
replica. Real engines (tiny checkpoint) behind real ReplicaServers, a real
front-end worker, real Valkey.
"""

import grpc

from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc
from rel_support import eventually

LONG = 8000   # tokens: the streams are still running while the test looks at where they went


async def test_a_burst_of_new_requests_spreads_over_idle_replicas(cluster):
    await cluster.add_replica("r1")
    await cluster.add_replica("r2")
    worker = await cluster.add_worker("w1", routing="least_loaded")
    engines = [engine for _, engine in cluster.replicas]
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        calls = [stub.Complete(pb.CompleteRequest(prefix=f"burst {i}", sampling=pb.Sampling(max_tokens=LONG)))
                 for i in range(4)]
        for call in calls:                       # all four accepted before any heartbeat could tell
            assert (await call.read()).WhichOneof("kind") == "accepted"
        await eventually(lambda: sum(e.load().running for e in engines) == 4)
        assert [e.load().running for e in engines] == [2, 2]
        for call in calls:
            call.cancel()
    await eventually(lambda: sum(e.load().running for e in engines) == 0)


async def test_worker_in_flight_counts_follow_its_engine_calls(cluster):
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    pool = worker._pool
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        call = stub.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(max_tokens=LONG)))
        assert (await call.read()).WhichOneof("kind") == "accepted"
        assert pool.inflight() == {"r1": 1}      # the open engine call (its pick's reservation was used up)
        call.cancel()
        await eventually(lambda: pool.inflight() == {})
        done = [m async for m in stub.Complete(pb.CompleteRequest(prefix="y", sampling=pb.Sampling(max_tokens=3)))]
        assert done[-1].WhichOneof("kind") == "final"
        await eventually(lambda: pool.inflight() == {})
