"""Request ids are scoped per tenant inside flint (`tenant/id`); every message a client receives names its
ids as the client sent them (issue 13: a queue-timeout refusal showed the victim `victim/g0-j3-s58`).

Two tenants with API keys; real Valkey, front-end worker (gRPC and HTTP) and engine (rel_support.py).
"""

import asyncio

import aiohttp
import grpc
import pytest

from flint.client import FlintClient, RetryPolicy
from flint.errors import InvalidArgument, NotFound, ResourceExhausted
from flint.frontend.openai_api import error_of
from flint.security.context import reset_tenant, set_tenant
from flint.security.redact import unscoped
from flint.v1 import flint_pb2 as pb
from flint.v1 import flint_pb2_grpc

NO_RETRY = RetryPolicy(max_attempts=1)


def test_unscoped_rewrites_only_the_tenants_own_ids():
    assert unscoped("request 'acme/g0-j3' could not start", "acme") == "request 'g0-j3' could not start"
    assert unscoped("request 'acme/r-1#takeover-0a1b2c3d' failed", "acme") == "request 'r-1' failed"
    assert unscoped("context file 'src/acme/x.py' is too big", "acme") == "context file 'src/acme/x.py' is too big"
    assert unscoped("request 'acme/x'", "") == "request 'acme/x'"


def test_http_error_bodies_use_the_clients_id():
    token = set_tenant("acme")
    try:
        _, body = error_of(ResourceExhausted("request 'acme/job-7' could not start within 2000 ms"))
    finally:
        reset_tenant(token)
    assert body["error"]["message"] == "request 'job-7' could not start within 2000 ms"


async def test_refusals_name_the_clients_id_not_the_scoped_one(cluster, tenant_keys):
    path, key_a, _ = tenant_keys
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", security={"api_keys_file": path}, http_port=0)
    async with FlintClient(worker.address, api_key=key_a, retry=NO_RETRY) as a:
        running = a.complete("long", max_tokens=8000, request_id="dup")
        await running.__anext__()
        with pytest.raises(InvalidArgument) as err:                    # a status ending a Complete
            await a.complete_text("x", max_tokens=1, request_id="dup")
        assert "'dup'" in err.value.message and "tenant-a" not in err.value.message
        with pytest.raises(NotFound) as err:                           # a status ending a Resume
            async for _ in a.resume("gone", 0):
                pass
        assert "'gone'" in err.value.message and "tenant-a" not in err.value.message

        async with grpc.aio.insecure_channel(worker.address) as channel:  # a RequestError on a Session
            call = flint_pb2_grpc.FlintStub(channel).Session(metadata=(("authorization", f"Bearer {key_a}"),))
            await call.write(pb.ClientMessage(complete=pb.CompleteRequest(request_id="dup", prefix="x")))
            reply = await asyncio.wait_for(call.read(), 10)
            assert reply.WhichOneof("kind") == "error" and reply.error.request_id == "dup"
            assert "'dup'" in reply.error.message and "tenant-a" not in reply.error.message
            call.cancel()

        async with aiohttp.ClientSession() as http:                     # the OpenAI-compatible door's ids
            response = await http.post(f"http://127.0.0.1:{worker.http_port}/v1/completions",
                                       json={"prompt": "x", "max_tokens": 1},
                                       headers={"Authorization": f"Bearer {key_a}"})
            body = await response.json()
        assert response.status == 200 and body["id"].startswith("cmpl-r-") and "tenant-a" not in body["id"]
        await a.interrupt("dup")
        await running.aclose()
