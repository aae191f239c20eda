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
import inspect

import grpc

from flint.errors import FlintError, Unauthenticated, Unavailable
from flint.grpc_status import as_flint_error
from flint.security.context import reset_tenant, set_tenant
from flint.security.keystore import KeyStore

PUBLIC_SERVICE_PREFIX = "/flint.v1.Flint/"


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
    from flint.grpc_status import abort_with

    def make(kind, _behavior):
        async def deny(request, context):
            await abort_with(context, error)

        if kind.endswith("_stream"):
            async def deny_stream(request, context):
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
                revocation = _Revocation()
                try:
                    with keys.watch(key, revocation.cancel_current_task):
                        async for item in behavior(request, context):
                            yield item
                except asyncio.CancelledError:
                    if not revocation.revoked:
                        raise
                    asyncio.current_task().uncancel()
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, REVOKED)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the client's view of it, built while the tenant is bound
                    raise as_flint_error(exc) from exc
                finally:
                    reset_tenant(token)

            return bound_stream

        async def bound(request, context):
            token = set_tenant(tenant)
            revocation = _Revocation()
            try:
                if not watched:
                    return await behavior(request, context)
                with keys.watch(key, revocation.cancel_current_task):
                    return await behavior(request, context)
            except asyncio.CancelledError:
                if not revocation.revoked:
                    raise
                asyncio.current_task().uncancel()
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, REVOKED)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - as above
                raise as_flint_error(exc) from exc
            finally:
                reset_tenant(token)

        return bound

    return make


class _Revocation:
    """Cancels the task serving a call when its key is revoked (no per-message cost while it is valid)."""

    def __init__(self):
        self.revoked = False
        self._task = asyncio.current_task()

    def cancel_current_task(self) -> None:
        self.revoked = True
        self._task.cancel()
