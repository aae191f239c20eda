"""Calls per client connection on the public service: over `max_streams_per_connection`, RESOURCE_EXHAUSTED.

HTTP/2's own cap (SETTINGS_MAX_CONCURRENT_STREAMS) cannot answer with a status: a client that opens
streams before it has read the server's settings (a flood on a fresh connection) gets them reset, which
gRPC reports as INTERNAL ("Internal error from Core") or UNAVAILABLE (REFUSED_STREAM); the hostile soak's
Session flood saw 212 and 1,567 of those. So flint counts a connection's calls itself and refuses the
ones over the cap with RESOURCE_EXHAUSTED and a retry delay, and HTTP/2's cap is only a backstop,
`HTTP2_BACKSTOP_FACTOR` times higher.

A Session call (client-streaming) is refused only once its first message has arrived, or after
`FIRST_MESSAGE_WAIT_S`: gRPC's Python client reports a write that the server's status overtook (the
server ends a call it refuses at once, with trailers and RST_STREAM) as INTERNAL "Internal error from
Core" (debug_error_string 'Failed "execute_batch": (<...SendMessageOperation...>,)') and drops the
server's status, which a busy client (the hostile soak's driver at load 8: 394 INTERNAL in its Session
flood) hits between opening the call and writing its Open.
"""

from __future__ import annotations

import asyncio
import contextlib

from flint.errors import ResourceExhausted

HTTP2_BACKSTOP_FACTOR = 16
RETRY_AFTER_MS = 1000
FIRST_MESSAGE_WAIT_S = 1.0


async def before_refusing(requests) -> None:
    """Let a client-streaming call's first message arrive (at most FIRST_MESSAGE_WAIT_S) before it is refused,
    so the client's write of it completes and it reads the refusal's status instead of INTERNAL."""
    with contextlib.suppress(Exception):   # over, or the client sends nothing: refuse now
        async with asyncio.timeout(FIRST_MESSAGE_WAIT_S):
            await requests.__anext__()


class Reads:
    """A client-streaming call's request iterator, noting whether its handler has asked it for a message."""

    def __init__(self, requests):
        self._requests = requests
        self.asked = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        self.asked = True
        return await self._requests.__anext__()


class ConnectionCallCap:
    """At most `limit` concurrent flint.v1.Flint calls per client connection (its peer address). The public
    service's handlers take and give a call's place (flint.frontend.codec wraps each method once)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._held: dict[str, int] = {}

    def held(self, peer: str) -> int:
        return self._held.get(peer, 0)

    def take(self, peer: str) -> None:
        held = self._held.get(peer, 0)
        if held >= self.limit:
            raise ResourceExhausted(f"this connection already has {held} calls open (security.max_streams_per_"
                                    f"connection = {self.limit}); finish some, open another connection, or retry "
                                    f"after {RETRY_AFTER_MS} ms", retry_after_ms=RETRY_AFTER_MS)
        self._held[peer] = held + 1

    def give(self, peer: str) -> None:
        self._held[peer] -= 1
        if not self._held[peer]:
            del self._held[peer]
