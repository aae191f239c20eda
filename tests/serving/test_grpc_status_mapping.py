"""flint exceptions map to gRPC status codes in one place, both ways."""

import grpc
import pytest

from flint import errors
from flint.grpc_status import RETRY_AFTER_KEY, as_flint_error, code_number, from_rpc_error, status_code


@pytest.mark.parametrize("exc, code", [
    (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.ResourceExhausted("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
    (RuntimeError("boom"), grpc.StatusCode.INTERNAL),
])
def test_status_code_of_each_error(exc, code):
    assert status_code(exc) == code


def test_code_numbers_are_google_rpc_codes():
    assert code_number(grpc.StatusCode.INVALID_ARGUMENT) == 3
    assert code_number(grpc.StatusCode.NOT_FOUND) == 5


def test_unexpected_exception_becomes_a_generic_internal_error(caplog):
    error = as_flint_error(KeyError("slot"))  # the client sees no Python internals; the log names them
    assert isinstance(error, errors.Internal) and "KeyError" not in error.message and "error id" in error.message
    assert "KeyError: 'slot'" in caplog.text


def test_status_from_another_server_round_trips_with_retry_delay():
    err = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(),
                               grpc.aio.Metadata((RETRY_AFTER_KEY, "250")), details="queue full")
    error = from_rpc_error(err)
    assert isinstance(error, errors.ResourceExhausted)
    assert (error.message, error.retry_after_ms) == ("queue full", 250)


def test_cancelled_call_from_a_replica_is_unavailable_and_names_the_peer():
    err = grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                               details="gone")
    error = from_rpc_error(err, peer="engine replica 1.2.3.4:5")
    assert isinstance(error, errors.Unavailable) and "engine replica 1.2.3.4:5" in error.message
