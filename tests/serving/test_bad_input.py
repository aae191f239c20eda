"""Each bad input gets its status code and a message saying what to change; the server keeps serving."""

import subprocess
import sys

import grpc
import pytest
from support.services import TEST_CONTEXT_TOKENS, collect, long_edit

from flint.config import FrontendConfig
from flint.errors import Unavailable
from flint.frontend.server import FrontendWorker
from flint.v1 import flint_pb2 as pb


async def status_of(call_coro_or_stream) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(call_coro_or_stream)
    return info.value


async def still_serving(stub) -> None:
    messages = await collect(stub.Complete(pb.CompleteRequest(prefix="ok = ", sampling=pb.Sampling(max_tokens=2))))
    assert messages[-1].WhichOneof("kind") == "final"


async def test_prompt_longer_than_context_is_invalid_argument_naming_the_limit(flint_stub):
    err = await status_of(flint_stub.Complete(pb.CompleteRequest(prefix="x = 1\n" * TEST_CONTEXT_TOKENS)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(TEST_CONTEXT_TOKENS) in err.details()
    await still_serving(flint_stub)


async def test_unknown_model_is_not_found_listing_served_models(flint_stub):
    err = await status_of(flint_stub.Complete(pb.CompleteRequest(prefix="x", model="gpt-17")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "gpt-17" in err.details() and "served models" in err.details()
    await still_serving(flint_stub)


@pytest.mark.parametrize("sampling, needle", [
    (pb.Sampling(temperature=2.5), "temperature must be in [0, 2]"),
    (pb.Sampling(temperature=float("nan")), "temperature must be in [0, 2]"),
    (pb.Sampling(top_p=0.0), "top_p must be in (0, 1]"),
    (pb.Sampling(top_p=1.5), "top_p must be in (0, 1]"),
    (pb.Sampling(top_k=-1), "top_k must be >= 0"),
    (pb.Sampling(max_tokens=0), f"max_tokens must be in [1, {TEST_CONTEXT_TOKENS}]"),
    (pb.Sampling(max_tokens=10**6), f"max_tokens must be in [1, {TEST_CONTEXT_TOKENS}]"),
    (pb.Sampling(stop=["s"] * 17), "at most 16"),
    (pb.Sampling(stop=[""]), "1-256 bytes"),
])
async def test_out_of_range_sampling_is_invalid_argument_with_allowed_range(flint_stub, sampling, needle):
    err = await status_of(flint_stub.Complete(pb.CompleteRequest(prefix="x", sampling=sampling)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in err.details()
    await still_serving(flint_stub)


@pytest.mark.parametrize("request_id", ["has space", "x" * 129, "semi;colon"])
async def test_malformed_request_id_is_invalid_argument(flint_stub, request_id):
    err = await status_of(flint_stub.Complete(pb.CompleteRequest(request_id=request_id, prefix="x")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "[A-Za-z0-9._:-]" in err.details()


async def test_request_id_of_a_running_request_is_refused_on_any_worker(flint_stubs):
    worker_a, worker_b = flint_stubs
    running = worker_a.Edit(long_edit("dup-1"))
    assert (await running.read()).WhichOneof("kind") == "accepted"
    err = await status_of(worker_b.Complete(pb.CompleteRequest(request_id="dup-1", prefix="x")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "already in use" in err.details()
    await worker_b.Interrupt(pb.InterruptRequest(request_id="dup-1"))
    running.cancel()


async def test_edit_without_instruction_is_invalid_argument(flint_stub):
    err = await status_of(flint_stub.Edit(pb.EditRequest(code="x = 1\n")))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "instruction" in err.details()


async def test_invalid_utf8_is_invalid_argument_not_internal(frontend_workers, flint_stub):
    async with grpc.aio.insecure_channel(frontend_workers[0].address) as channel:
        raw = channel.unary_stream("/flint.v1.Flint/Complete", request_serializer=lambda b: b,
                                   response_deserializer=pb.ServerMessage.FromString)
        err = await status_of(raw(bytes([0x12, 0x02, 0xC3, 0x28])))  # prefix = an invalid 2-byte sequence
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in err.details()
    await still_serving(flint_stub)


async def test_worker_start_with_unreachable_redis_names_the_url():
    worker = FrontendWorker(FrontendConfig(redis_url="redis://127.0.0.1:9", port=0))
    with pytest.raises(Unavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1:9"):
        await worker.start()


def test_flint_serve_with_unreachable_redis_exits_with_message_naming_the_url():
    out = subprocess.run([sys.executable, "-m", "flint.cli", "serve", "--redis-url", "redis://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "cannot reach Redis at redis://127.0.0.1:9" in out.stderr
