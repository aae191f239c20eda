"""Calls per client connection on the public service: over `max_streams_per_connection`, RESOURCE_EXHAUSTED.

HTTP/2's own cap (SETTINGS_MAX_CONCURRENT_STREAMS) cannot answer with a status: a client that opens
streams before it has read the server's settings (a flood on a fresh connection) gets them reset, which
gRPC reports as INTERNAL ("Internal error from Core") or UNAVAILABLE (REFUSED_STREAM); the hostile soak's
Session flood saw 212 and 1,567 of those. So flint counts a connection's calls itself and refuses the
ones over the cap with RESOURCE_EXHAUSTED and a retry delay, and HTTP/2's cap is only a backstop,
`HTTP2_BACKSTOP_FACTOR` times higher.
"""

from __future__ import annotations

import inspect

import grpc

from flint.errors import ResourceExhausted

PUBLIC_SERVICE_PREFIX = "/flint.v1.Flint/"
HTTP2_BACKSTOP_FACTOR = 16
RETRY_AFTER_MS = 1000


class ConnectionCallCap(grpc.aio.ServerInterceptor):
    """At most `limit` concurrent flint.v1.Flint calls per client connection (its peer address)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held: dict[str, int] = {}

    def held(self, peer: str) -> int:
        return self._held.get(peer, 0)

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(PUBLIC_SERVICE_PREFIX):
            return handler
        for kind, make in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                           ("unary_stream", grpc.unary_stream_rpc_method_handler),
                           ("stream_unary", grpc.stream_unary_rpc_method_handler),
                           ("stream_stream", grpc.stream_stream_rpc_method_handler)):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return make(self._wrap(behavior), handler.request_deserializer, handler.response_serializer)
        return handler

    def _take(self, peer: str) -> None:
        held = self._held.get(peer, 0)
        if held >= self.limit:
            raise ResourceExhausted(f"this connection already has {held} calls open (security.max_streams_per_"
                                    f"connection = {self.limit}); finish some, open another connection, or retry "
                                    f"after {RETRY_AFTER_MS} ms", retry_after_ms=RETRY_AFTER_MS)
        self._held[peer] = held + 1

    def _give(self, peer: str) -> None:
        self._held[peer] -= 1
        if not self._held[peer]:
            del self._held[peer]

    def _wrap(self, behavior):
        if inspect.isasyncgenfunction(behavior):
            async def streamed(request, context):
                peer = context.peer()
                self._take(peer)
                try:
                    async for item in behavior(request, context):
                        yield item
                finally:
                    self._give(peer)

            return streamed

        async def called(request, context):
            peer = context.peer()
            self._take(peer)
            try:
                return await behavior(request, context)
            finally:
                self._give(peer)

        return called
