"""API keys per tenant, checked by one interceptor on the public service (keys live in `keystore`).

Calls to flint.v1.Flint must carry `authorization: Bearer <key>` (or
`x-api-key: <key>`); health checks and reflection stay open for probes.
The interceptor binds the call's tenant (`flint.security.context`) for
everything its handler runs: request records, sessions, journals and the
prefix-cache namespace are all tagged with it. A streaming call whose key
is revoked while it runs ends UNAUTHENTICATED within the key store's
`recheck_s`. Errors leave the handler as the client may see them, built
while the tenant is still bound (request ids in the client's own form).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging

import grpc

from flint.errors import FlintError, Unauthenticated, Unavailable
from flint.grpc_status import abort_with, as_flint_error
from flint.security.connections import before_refusing
from flint.security.context import reset_tenant, set_tenant
from flint.security.keystore import KeyStore

PUBLIC_SERVICE_PREFIX = "/flint.v1.Flint/"

log = logging.getLogger(__name__)


def presented_key(metadata) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.lower().startswith("bearer "):
            return value[7:].strip()
        if key == "x-api-key" and isinstance(value, str):
            return value.strip()
    return ""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED without a valid key; otherwise the handler runs with its tenant bound."""

    def __init__(self, keys: KeyStore):
        self._keys = keys

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(PUBLIC_SERVICE_PREFIX):
            return handler
        key = presented_key(handler_call_details.invocation_metadata)
        try:
            tenant = await self._keys.tenant_of(key) if key else None
        except Exception as exc:  # noqa: BLE001 - Redis down: the key cannot be checked now
            from flint.grpc_status import logged

            return deny_handler(handler, Unavailable(
                logged("API keys cannot be checked right now; retry shortly",
                       f"API key lookup failed: {type(exc).__name__}: {exc}"), retry_after_ms=1000))
        if tenant is None:
            why = ("no API key sent: pass `authorization: Bearer <key>` metadata (flint.client: api_key=...)"
                   if not key else "the API key is not valid: ask your operator for a key (`flint keys create`)")
            return deny_handler(handler, Unauthenticated(why))
        return _replace_behavior(handler, _bind(tenant, self._keys, key))


def deny_handler(handler, error: FlintError | str):
    """`handler` replaced by one that ends the call with `error`'s status (a string: UNAUTHENTICATED)."""
    return _replace_behavior(handler, _deny(Unauthenticated(error) if isinstance(error, str) else error))


def _kind(handler) -> str:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        if getattr(handler, kind) is not None:
            return kind
    raise ValueError("empty handler")


def _replace_behavior(handler, make):
    kind = _kind(handler)
    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(make(kind, getattr(handler, kind)), handler.request_deserializer, handler.response_serializer)


def _deny(error: FlintError):
    def make(kind, _behavior):
        async def deny(request, context):
            await abort_with(context, error)

        if kind.endswith("_stream"):
            async def deny_stream(request, context):
                if kind == "stream_stream":
                    await before_refusing(request)   # (flint.security.connections)
                await abort_with(context, error)
                yield None  # unreachable: makes this an async generator

            return deny_stream
        return deny

    return make


REVOKED = "the API key was revoked while this call ran; ask your operator for a valid key"


def _bind(tenant: str, keys: KeyStore, key: str):
    """Run the handler with `tenant` bound; a streaming response ends UNAUTHENTICATED if the key is revoked."""

    def make(kind, behavior):
        watched = kind.endswith("_stream")

        if inspect.isasyncgenfunction(behavior):
            async def bound_stream(request, context):
                token = set_tenant(tenant)
                revocation = _Revocation(context)
                try:
                    with keys.watch(key, revocation.end_call):
                        async with contextlib.aclosing(behavior(request, context)) as items:
                            async for item in items:
                                yield item
                except asyncio.CancelledError:
                    if not revocation.revoked:
                        raise
                    await revocation.end_here()
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the client's view of it, built while the tenant is bound
                    raise as_flint_error(exc) from exc
                finally:
                    reset_tenant(token)

            return bound_stream

        async def bound(request, context):
            token = set_tenant(tenant)
            revocation = _Revocation(context)
            try:
                if not watched:
                    return await behavior(request, context)
                with keys.watch(key, revocation.end_call):
                    return await behavior(request, context)
            except asyncio.CancelledError:
                if not revocation.revoked:
                    raise
                await revocation.end_here()
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - as above
                raise as_flint_error(exc) from exc
            finally:
                reset_tenant(token)

        return bound

    return make


class _Revocation:
    """Ends a call UNAUTHENTICATED when its key is revoked, wherever its handler is waiting.

    The handler's task is cancelled (nothing is paid per message while the key is valid). A handler waiting
    in flint's code gets the cancel and ends the call itself (`end_here`). But a streaming handler is an
    async generator: while gRPC's own loop writes the item it yielded (the whole time, when a client that
    does not read holds the write up on flow control) the cancel lands inside gRPC, which then ends the task
    without sending any status, and the client would wait for one forever. So once the task is over without
    a status, the status is sent from outside it (`_after_task`); it reaches the client after the messages
    already written. Either way the task's end runs the call's done callbacks, which free its engine work.
    """

    def __init__(self, context):
        self.revoked = False
        self._context = context
        self._task = asyncio.current_task()
        self._ended = False

    def end_call(self) -> None:
        """`KeyStore.watch`'s callback: the key is no longer valid."""
        self.revoked = True
        self._task.add_done_callback(self._after_task)
        self._task.cancel()

    async def end_here(self) -> None:
        """In the handler's task, once the revocation's cancel reached flint's code: end the call (raises)."""
        self._ended = True
        asyncio.current_task().uncancel()
        await abort_with(self._context, Unauthenticated(REVOKED))

    def _after_task(self, _task: asyncio.Task) -> None:
        if self._ended or self._context.done():
            return
        self._ended = True
        ending = asyncio.get_running_loop().create_task(self._end_from_outside(), name="end revoked call")
        _ENDING.add(ending)
        ending.add_done_callback(_ENDING.discard)

    async def _end_from_outside(self) -> None:
        try:
            await abort_with(self._context, Unauthenticated(REVOKED))
        except grpc.aio.AbortError:
            pass  # abort's way of saying the status went out
        except Exception as exc:  # noqa: BLE001 - the client went away meanwhile: nobody left to tell
            log.info("could not end a call whose API key was revoked: %s: %s", type(exc).__name__, exc)


_ENDING: set[asyncio.Task] = set()   # statuses being sent to revoked calls (the loop holds tasks weakly)
