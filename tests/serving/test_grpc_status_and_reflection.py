"""Errors carry google.rpc.Status details (ErrorInfo, BadRequest, RetryInfo); reflection answers v1 and v1alpha."""

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_reflection.v1alpha import reflection_pb2

from flint.v1 import flint_pb2 as pb


def details_of(err: grpc.aio.AioRpcError) -> status_pb2.Status:
    raw = dict(err.trailing_metadata() or ())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    assert status.code == err.code().value[0] and status.message == err.details()
    return status


def unpack(status: status_pb2.Status, cls):
    for detail in status.details:
        message = cls()
        if detail.Unpack(message):
            return message
    return None


async def test_invalid_argument_names_the_field_in_bad_request_and_error_info(flint_stub):
    call = flint_stub.Complete(pb.CompleteRequest(prefix="x", sampling=pb.Sampling(temperature=5.0)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = details_of(err.value)
    info = unpack(status, error_details_pb2.ErrorInfo)
    assert info.reason == "INVALID_ARGUMENT" and info.domain == "flint.v1"
    bad = unpack(status, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "sampling.temperature"
    assert unpack(status, error_details_pb2.RetryInfo) is None     # nothing to wait for: fix the request


async def test_not_found_carries_error_info_without_a_field(flint_stub):
    call = flint_stub.Complete(pb.CompleteRequest(prefix="x", model="no-such-model"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in call:
            pass
    status = details_of(err.value)
    assert unpack(status, error_details_pb2.ErrorInfo).reason == "NOT_FOUND"
    assert unpack(status, error_details_pb2.BadRequest) is None


@pytest.mark.parametrize("service", ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"])
async def test_reflection_lists_the_services_in_both_versions(frontend_workers, service):
    async with grpc.aio.insecure_channel(frontend_workers[0].address) as channel:
        info = channel.stream_stream(f"/{service}/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        call = info()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        response = await call.read()
        await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {"flint.v1.Flint", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
