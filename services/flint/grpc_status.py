"""flint exceptions <-> gRPC status codes, in one place.

Servers raise `flint.errors` types; `ErrorInterceptor` turns them into a
status (and the retry delay into trailing metadata) for every RPC of a
`grpc.aio` server. Going the other way, `from_rpc_error` turns a status
received from another flint server back into the same exception, so an
engine replica's INVALID_ARGUMENT reaches the client unchanged through the
front-end.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import re
import secrets

import grpc

from flint import errors

log = logging.getLogger(__name__)

RETRY_AFTER_KEY = "flint-retry-after-ms"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_CODES: dict[type[errors.FlintError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}
_ERRORS = {code: cls for cls, code in _CODES.items()}


def status_code(exc: BaseException) -> grpc.StatusCode:
    """The gRPC status of an exception; anything not a flint error is INTERNAL."""
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return grpc.StatusCode.INTERNAL


def code_number(code: grpc.StatusCode) -> int:
    """google.rpc.Code value of a status (3 = INVALID_ARGUMENT, ...), as carried in RequestError."""
    return code.value[0]


_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def code_of(number: int) -> grpc.StatusCode:
    """The status of a google.rpc.Code value (`code_number`'s inverse; UNKNOWN for a value gRPC has not)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


# Statuses from another flint server whose message was written for the client and passes through unchanged.
# Any other status (UNAVAILABLE, UNKNOWN, INTERNAL, CANCELLED, UNAUTHENTICATED on the internal API...) can carry
# gRPC's own text (addresses, OS errors) and reaches clients as a generic message with an error id.
_CLIENT_MESSAGES = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.PERMISSION_DENIED})
# host:port and gRPC's "ipv4:"/"ipv6:" peers: never part of a message a client receives.
_ADDRESS = re.compile(r"(?:\bipv[46]:|\bunix:)\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b|"
                      r"\[[0-9A-Fa-f]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\](?::\d{1,5})?")


def new_error_id() -> str:
    return secrets.token_hex(6)


def logged(message: str, detail: str, *, level: int = logging.WARNING, exc: BaseException | None = None) -> str:
    """`message` for the client with a fresh error id; `detail` goes to the log under the same id."""
    error_id = new_error_id()
    log.log(level, "error id %s: %s", error_id, detail, exc_info=exc)
    return f"{message} (error id {error_id})"


def peer_unavailable(what: str, err: grpc.aio.AioRpcError, *, hint: str = "", retry_after_ms: int = 100,
                     peer: str = "") -> errors.Unavailable:
    """UNAVAILABLE for a client when a call to another server (an engine replica) broke; details are logged."""
    detail = f"{what} failed: {err.code().name} from {peer or 'peer'}: {err.details()}"
    return errors.Unavailable(logged(f"{what} went away{'; ' + hint if hint else ''}", detail),
                              retry_after_ms=retry_after_ms)


def as_flint_error(exc: BaseException) -> errors.FlintError:
    """Any exception as the flint error a client may see: its own message when flint wrote it for the client,
    otherwise a stable generic message with an error id (the details go to the log under that id)."""
    if isinstance(exc, errors.FlintError):
        peer_code = getattr(exc, "peer_code", None)
        if peer_code is not None and peer_code not in _CLIENT_MESSAGES:
            generic = errors.Unavailable if isinstance(exc, errors.Unavailable) else errors.Internal
            return generic(logged("a flint component failed" if generic is errors.Internal
                                  else "a flint component is unavailable; retry shortly",
                                  f"{peer_code.name}: {exc.message}"), retry_after_ms=exc.retry_after_ms)
        return _scrubbed(exc)
    if isinstance(exc, grpc.aio.AioRpcError):
        return as_flint_error(from_rpc_error(exc))
    if type(exc).__module__.startswith("redis."):  # redis-py's ConnectionError, TimeoutError, ...
        return errors.Unavailable(logged("flint's state store (Redis) is unavailable; retry shortly",
                                         f"Redis call failed: {type(exc).__name__}: {exc}"), retry_after_ms=1000)
    return errors.Internal(logged("internal error", f"unexpected {type(exc).__name__}: {exc}",
                                  level=logging.ERROR, exc=exc))


def _scrubbed(error: errors.FlintError) -> errors.FlintError:
    """A backstop: credentials and network addresses never leave in a status message, and request ids are
    the caller's own (`id`, not flint's internal `tenant/id`; call this where the tenant is bound)."""
    from flint.security.context import current_tenant
    from flint.security.redact import redact, unscoped

    clean = unscoped(_ADDRESS.sub("[address]", redact(error.message)), current_tenant())
    if clean == error.message:
        return error
    scrubbed = copy.copy(error)
    scrubbed.message = clean
    scrubbed.args = (clean,)
    log.info("scrubbed a client-facing message: %s", error.message)
    return scrubbed


def from_rpc_error(err: grpc.aio.AioRpcError, *, peer: str = "") -> errors.FlintError:
    """The flint exception for a status received from another server (`peer_code` records the status)."""
    code = err.code()
    message = err.details() or code.name
    cls = _ERRORS.get(code)
    if cls is None:  # CANCELLED, UNKNOWN, ...: the other side broke or went away
        cls = errors.Unavailable if code == grpc.StatusCode.CANCELLED else errors.Internal
        message = f"{code.name}{' from ' + peer if peer else ''}: {message}"
    error = cls(message, retry_after_ms=retry_after_ms_of(err.trailing_metadata() or ()))
    error.peer_code = code
    return error


def retry_after_ms_of(trailing_metadata) -> int:
    """The server's retry delay: google.rpc.RetryInfo in the status details, else flint's metadata key."""
    from google.rpc import error_details_pb2, status_pb2

    fallback = 0
    for key, value in trailing_metadata:
        if key == STATUS_DETAILS_KEY:
            try:
                for detail in status_pb2.Status.FromString(value).details:
                    info = error_details_pb2.RetryInfo()
                    if detail.Unpack(info):
                        return info.retry_delay.seconds * 1000 + info.retry_delay.nanos // 1_000_000
            except Exception:  # noqa: BLE001 - a malformed detail falls back to the plain key
                pass
        elif key == RETRY_AFTER_KEY:
            with contextlib.suppress(ValueError):
                fallback = int(value)
    return fallback


ERROR_DOMAIN = "flint.v1"
# "sampling.temperature must be ...", "`max_tokens` must be ...": the field a message is about, when it leads.
_FIELD = re.compile(r"^`?([a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*)`? (?:must|is|has|may|needs|cannot)\b")


def rich_status(code: grpc.StatusCode, message: str, retry_after_ms: int = 0):
    """google.rpc.Status of an error: ErrorInfo (reason = the status name, domain flint.v1) always,
    BadRequest naming the field for INVALID_ARGUMENT when the message leads with one, RetryInfo when
    the client should wait. Built with grpcio-status (`rpc_status.to_status`)."""
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    status = status_pb2.Status(code=code_number(code), message=message)
    status.details.add().Pack(error_details_pb2.ErrorInfo(reason=code.name, domain=ERROR_DOMAIN))
    field = _FIELD.match(message) if code == grpc.StatusCode.INVALID_ARGUMENT else None
    if field is not None:
        bad = error_details_pb2.BadRequest()
        bad.field_violations.add(field=field.group(1), description=message)
        status.details.add().Pack(bad)
    if retry_after_ms:
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(retry_after_ms)
        status.details.add().Pack(info)
    return rpc_status.to_status(status)


def status_details(code: grpc.StatusCode, message: str, retry_after_ms: int) -> bytes:
    """The google.rpc.Status above, serialized for the `grpc-status-details-bin` trailer."""
    return dict(rich_status(code, message, retry_after_ms).trailing_metadata)[STATUS_DETAILS_KEY]


def error_of(error) -> errors.FlintError:
    """The flint exception for a flint.v1.RequestError (a per-request error on a Session stream)."""
    code = code_of(error.code)
    cls = _ERRORS.get(code, errors.Internal)
    if cls is errors.FailedPrecondition:
        return cls(error.message or code.name, document_version=error.document_version,
                   retry_after_ms=error.retry_after_ms)
    return cls(error.message or code.name, retry_after_ms=error.retry_after_ms)


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the RPC with the status of `exc` (raises, as `context.abort` does)."""
    error = as_flint_error(exc)  # logs the details of anything not meant for the client
    metadata = [(STATUS_DETAILS_KEY, status_details(status_code(error), error.message, error.retry_after_ms))]
    if error.retry_after_ms:  # the retry delay rides in RetryInfo (and a plain key for simple clients)
        metadata.append((RETRY_AFTER_KEY, str(error.retry_after_ms)))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(status_code(error), error.message)


class WrappedHandlers:
    """The wrapped form of each method handler an interceptor has seen, made once: a server's registered
    handlers are the same objects on every call, so a call reuses their wrapping instead of building it anew.
    Bounded (handlers built per call, such as the auth interceptor's, are wrapped each time and not kept)."""

    LIMIT = 256

    def __init__(self, wrap):
        self._wrap = wrap
        self._made: dict[int, tuple] = {}   # id(handler) -> (handler, its wrapped form)

    def __call__(self, handler):
        made = self._made.get(id(handler))
        if made is not None and made[0] is handler:
            return made[1]
        wrapped = self._wrap(handler)
        if len(self._made) >= self.LIMIT:
            self._made.clear()
        self._made[id(handler)] = (handler, wrapped)
        return wrapped


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps exceptions escaping any handler to their gRPC status."""

    def __init__(self):
        self._wrapped = WrappedHandlers(self._wrap)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._wrapped(handler)

    @staticmethod
    def _wrap(handler):
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer)


async def _to_status(context, exc: Exception) -> None:
    # CancelledError is a BaseException and never reaches here: cancellation (a client
    # gone away) must propagate so engine work is freed. context.abort()'s own
    # AbortError passes through untouched.
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    await abort_with(context, exc)


def _wrap_unary(behavior):
    async def wrapped(request, context):
        try:
            return await behavior(request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            await _to_status(context, exc)

    return wrapped


def _wrap_stream(behavior):
    if not inspect.isasyncgenfunction(behavior):
        return _wrap_unary(behavior)  # a coroutine that writes with context.write

    async def wrapped(request, context):
        try:
            # aclosing: if the client goes away while we are suspended at `yield`, the
            # handler's own cleanup (cancelling engine work) still runs now, not at GC.
            async with contextlib.aclosing(behavior(request, context)) as items:
                async for item in items:
                    yield item
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            await _to_status(context, exc)

    return wrapped
