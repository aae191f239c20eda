"""Registers the public Flint service: decoders that never fail the call, and one wrapper per method.

Python protobuf rejects a `string` field holding invalid UTF-8 at parse
time. With the generated stubs, gRPC then ends the call with INTERNAL
("Exception deserializing request!") and, on the Session stream, kills the
whole stream. Here a message that does not parse becomes an `Undecodable`
value instead, so handlers answer INVALID_ARGUMENT (Complete/Edit/Interrupt)
or a RequestError that leaves the Session stream open.

Each method is wrapped once, when the service is registered (`_served`): the connection's call cap
(flint.security.connections) is held for the call, and any exception ends the call with its status
(flint.grpc_status). Those were two server interceptors, which grpc.aio runs on every call: 70-80 us of
a worker's path from the client's call to its handler (wall-clock stamps, 600 sequential one-token
requests, 2-core EPYC), and one more generator layer for every message out.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from flint.errors import InvalidArgument
from flint.grpc_status import abort_with
from flint.security.connections import ConnectionCallCap, Reads, before_refusing
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


def flint_handler(servicer, cap: ConnectionCallCap | None = None) -> grpc.GenericRpcHandler:
    """The generic handler of flint.v1.Flint for `servicer` (Session, Complete, Edit, Interrupt, Resume), each
    method under `cap` (none: uncapped) with its errors mapped to statuses."""
    out = pb.ServerMessage.SerializeToString
    return grpc.method_handlers_generic_handler(SERVICE, {
        "Session": grpc.stream_stream_rpc_method_handler(
            _served(servicer.Session, cap, client_streaming=True), _decoder(pb.ClientMessage), out),
        "Complete": grpc.unary_stream_rpc_method_handler(
            _served(servicer.Complete, cap), _decoder(pb.CompleteRequest), out),
        "Edit": grpc.unary_stream_rpc_method_handler(_served(servicer.Edit, cap), _decoder(pb.EditRequest), out),
        "Interrupt": grpc.unary_unary_rpc_method_handler(
            _served(servicer.Interrupt, cap), _decoder(pb.InterruptRequest), pb.InterruptResponse.SerializeToString),
        "Resume": grpc.unary_stream_rpc_method_handler(_served(servicer.Resume, cap), _decoder(pb.ResumeRequest), out),
    })


def _served(behavior, cap: ConnectionCallCap | None, *, client_streaming: bool = False):
    """`behavior` holding a place of the connection's call cap while it runs, its exceptions mapped to the
    call's status (CancelledError, a client gone away, passes: the handler's cleanup frees engine work). A
    client-streaming call refused before it read anything first lets the client's first message arrive
    (`before_refusing`)."""
    if inspect.isasyncgenfunction(behavior):
        async def streamed(request, context):
            peer = context.peer() if cap is not None else ""
            reads = Reads(request) if client_streaming else None
            try:
                if cap is not None:
                    cap.take(peer)
                try:
                    # aclosing: if the client goes away while the handler is suspended at `yield`, its cleanup
                    # (cancelling engine work) runs now, not at garbage collection.
                    async with contextlib.aclosing(behavior(reads or request, context)) as items:
                        async for item in items:
                            yield item
                finally:
                    if cap is not None:
                        cap.give(peer)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                if reads is not None and not reads.asked:
                    await before_refusing(reads)
                await abort_with(context, exc)

        return streamed

    async def called(request, context):
        peer = context.peer() if cap is not None else ""
        try:
            if cap is not None:
                cap.take(peer)
            try:
                return await behavior(request, context)
            finally:
                if cap is not None:
                    cap.give(peer)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            await abort_with(context, exc)

    return called
