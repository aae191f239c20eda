"""A refused Session call ends with its status (RESOURCE_EXHAUSTED, UNAUTHENTICATED), not INTERNAL, also when
its client writes the first message late.

gRPC's Python client turns a write that the server's status overtook into INTERNAL "Internal error from
Core" and drops the status; the hostile soak's busy driver got 394 of those in its Session flood. Here the
client's event loop is blocked between opening the call and writing its Open, while the front-end, in its
own process with TLS and API keys as in the soak, decides.
"""

import time

import grpc
import pytest

from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc
from tls_certs import write_tls_files

BUSY_S = 0.3


async def _refused_late_writer(stub, metadata) -> grpc.aio.AioRpcError:
    call = stub.Session(metadata=metadata, timeout=10)
    await call.wait_for_connection()   # the call's headers are out: the server decides now
    time.sleep(BUSY_S)                 # a busy client: the server's answer reaches gRPC core, not this loop
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.write(pb.ClientMessage(open=pb.Open()))
        await call.read()
    return err.value


async def _opened(stub, metadata):
    call = stub.Session(metadata=metadata)
    await call.write(pb.ClientMessage(open=pb.Open()))
    assert (await call.read()).WhichOneof("kind") == "opened"
    return call


async def test_a_refused_session_whose_client_writes_late_gets_the_refusal_not_internal(cluster, tenant_keys,
                                                                                        tmp_path):
    path, key_a, key_b = tenant_keys
    files = write_tls_files(tmp_path)
    await cluster.add_replica("r1")
    address = await cluster.add_worker_process("w1", security={
        "api_keys_file": str(path), "tls_cert_file": str(files["server_cert"]),
        "tls_key_file": str(files["server_key"]), "max_streams_per_connection": 2, "max_streams_per_tenant": 1})
    a, b = ((("authorization", f"Bearer {key}"),) for key in (key_a, key_b))
    credentials = grpc.ssl_channel_credentials(files["ca"].read_bytes())
    async with grpc.aio.secure_channel(address, credentials,
                                       options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        stub = flint_pb2_grpc.FlintStub(channel)
        holders = [await _opened(stub, a)]             # tenant-a's one stream; the connection has room for one more
        err = await _refused_late_writer(stub, a)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert "tenant-a already has 1 stream calls open" in err.details()
        err = await _refused_late_writer(stub, (("authorization", "Bearer flk_not_a_key"),))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED, err
        holders.append(await _opened(stub, b))         # the connection's two calls
        err = await _refused_late_writer(stub, b)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        assert "max_streams_per_connection = 2" in err.details()
        for call in holders:
            call.cancel()
