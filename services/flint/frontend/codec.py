"""Registers the public Flint service with decoders that never fail the call.

Python protobuf rejects a `string` field holding invalid UTF-8 at parse
time. With the generated stubs, gRPC then ends the call with INTERNAL
("Exception deserializing request!") and, on the Session stream, kills the
whole stream. Here a message that does not parse becomes an `Undecodable`
value instead, so handlers answer INVALID_ARGUMENT (Complete/Edit/Interrupt)
or a RequestError that leaves the Session stream open.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from flint.errors import InvalidArgument
from flint.v1 import flint_pb2 as pb

SERVICE = "flint.v1.Flint"


@dataclass(frozen=True)
class Undecodable:
    message_type: str
    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(f"could not parse a {self.message_type} message ({self.reason}); every string "
                               "field must be valid UTF-8 - send text, not raw bytes")


def check_decoded(message):
    """Raise INVALID_ARGUMENT for a message that did not parse; return it otherwise."""
    if isinstance(message, Undecodable):
        raise message.error()
    return message


def on_call_end(context, stop) -> None:
    """Run `stop()` when the call ends, or now if it has ended already. gRPC does not cancel a handler that
    is awaiting something else (routing, admission, Redis) when its client cancels, and a cancel can land
    before the handler runs at all: without this, such a request would start and generate for nobody."""
    context.add_done_callback(lambda _context: stop())
    if context.done():
        stop()


def _decoder(message_cls):
    def decode(data: bytes):
        try:
            return message_cls.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_cls.DESCRIPTOR.full_name, str(exc) or "malformed protobuf")

    return decode


def flint_handler(servicer) -> grpc.GenericRpcHandler:
    """The generic handler of flint.v1.Flint for `servicer` (Session, Complete, Edit, Interrupt, Resume)."""
    out = pb.ServerMessage.SerializeToString
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Session": grpc.stream_stream_rpc_method_handler(servicer.Session, _decoder(pb.ClientMessage), out),
        "Complete": grpc.unary_stream_rpc_method_handler(servicer.Complete, _decoder(pb.CompleteRequest), out),
        "Edit": grpc.unary_stream_rpc_method_handler(servicer.Edit, _decoder(pb.EditRequest), out),
        "Interrupt": grpc.unary_unary_rpc_method_handler(
            servicer.Interrupt, _decoder(pb.InterruptRequest), pb.InterruptResponse.SerializeToString),
        "Resume": grpc.unary_stream_rpc_method_handler(servicer.Resume, _decoder(pb.ResumeRequest), out),
    })
