"""A stream's outgoing queue, bounded: a request's deltas merge while its client reads slower than it is served.

Every edge (a Session stream, a Complete/Edit call, an HTTP response) writes one stream to one client
through an `Outbox`, whose writer takes items one at a time and then waits for the client (gRPC and HTTP
flow control hold a write while the client does not read). A request's owner (flint.frontend.owner)
puts its events in. A client that keeps up gets one delta per engine delta (a short queue,
`queued_deltas_per_request`, absorbs bursts). Once that many of a request's deltas wait, the owner
adds no more: it holds the new text back, merged, and puts it in as one delta (one seq, the token
counts added up) each time the writer takes one of the request's deltas. A stream therefore queues
at most `queued_deltas_per_request` (+1 at the end) deltas per request plus the text its owners hold.

What owners hold back is charged against two caps (`BufferLimits`): per stream and per worker (all
its streams). A request whose held text would pass either ends with RESOURCE_EXHAUSTED, and its engine
call is cancelled, so a client that never reads costs a bounded amount of memory and no engine time.

A merged delta reaches the client only once the resume journal holds it: a takeover runs the request
again and numbers one delta per engine delta after the journal's end, so a client must never hold a
merged delta the journal lacks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, fields
from typing import Any, Awaitable, Callable

from flint.errors import ResourceExhausted
from flint.frontend import events as ev


@dataclass(frozen=True)
class BufferLimits:
    """Front-end config table `buffers`: output held back for clients that read slowly."""

    max_buffered_bytes_per_stream: int = 1 << 20     # 1 MiB of held text per stream (a call or Session stream)
    max_buffered_bytes_per_worker: int = 64 << 20    # 64 MiB over all streams of one worker
    queued_deltas_per_request: int = 16              # deltas a request may have waiting before they merge

    def __post_init__(self) -> None:
        for f in fields(self):
            value, least = getattr(self, f.name), 1 if f.name == "queued_deltas_per_request" else 1024
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(f"buffers.{f.name} must be an integer >= {least}, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "BufferLimits":
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown buffers key(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        return cls(**values)


class BufferBudget:
    """Bytes held back for slow clients over all streams of one worker (and the most there ever were)."""

    def __init__(self, limits: BufferLimits | None = None):
        self.limits = limits or BufferLimits()
        self.bytes = 0
        self.peak_bytes = 0
        self.refused = 0          # requests ended because a client read too slowly


class Outbox:
    def __init__(self, budget: BufferBudget | None = None):
        self.budget = budget or BufferBudget()
        self.held_bytes = 0                                  # held back by this stream's owners
        self.peak_held_bytes = 0
        self._items: deque[tuple[Any, Callable[[], Awaitable] | None]] = deque()
        self._ready = asyncio.Event()
        self._took = asyncio.Event()                         # set whenever the writer takes an item
        self._queued: dict[str, int] = {}                    # request id -> its deltas waiting in the queue
        self._taken: dict[str, Callable[[], None]] = {}      # request id -> call when one of them is taken
        self._settle: dict[str, Callable[[], Awaitable]] = {}   # request id -> await before its next delta goes

    def __len__(self) -> int:
        return len(self._items)

    # ------------------------------------------------------------ producers
    def put(self, item) -> None:
        """Queue anything the stream sends (a front-end event, a message, an end marker)."""
        settle = None
        if isinstance(item, ev.Delta):
            self._queued[item.request_id] = self._queued.get(item.request_id, 0) + 1
            settle = self._settle.pop(item.request_id, None)
        self._items.append((item, settle))
        self._ready.set()

    put_nowait = put

    def backed_up(self, request_id: str) -> bool:
        """As many of this request's deltas wait as a client that keeps up ever leaves: it is reading slowly."""
        return self._queued.get(request_id, 0) >= self.budget.limits.queued_deltas_per_request

    def when_taken(self, request_id: str, callback: Callable[[], None]) -> None:
        """Call `callback` once the writer takes one of this request's waiting deltas."""
        self._taken[request_id] = callback

    def settle_first(self, request_id: str, settle: Callable[[], Awaitable]) -> None:
        """The request's next delta goes to the client only after `await settle()` (its journal write)."""
        self._settle[request_id] = settle

    async def room(self, request_id: str) -> None:
        """Wait while the request is backed up: for a producer that can wait (a resume's replay) rather than hold."""
        while self.backed_up(request_id):
            self._took.clear()
            await self._took.wait()

    def hold(self, nbytes: int) -> bool:
        """Charge `nbytes` of held text; False (and nothing charged) if it would pass a cap."""
        limits = self.budget.limits
        if (self.held_bytes + nbytes > limits.max_buffered_bytes_per_stream
                or self.budget.bytes + nbytes > limits.max_buffered_bytes_per_worker):
            self.budget.refused += 1
            return False
        self.held_bytes += nbytes
        self.budget.bytes += nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        self.budget.peak_bytes = max(self.budget.peak_bytes, self.budget.bytes)
        return True

    def unhold(self, nbytes: int) -> None:
        self.held_bytes -= nbytes
        self.budget.bytes -= nbytes

    # ------------------------------------------------------------ the writer
    async def get(self):
        """The next item to send; a request's held text goes in as its next delta when its waiting one is taken."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item, settle = self._items.popleft()
        self._took.set()
        if settle is not None:
            await settle()
        if isinstance(item, ev.Delta):
            rid = item.request_id
            left = self._queued.pop(rid) - 1
            if left:
                self._queued[rid] = left
            taken = self._taken.pop(rid, None)
            if taken is not None:
                taken()
        return item


class HeldText:
    """One request's text held back while its client is behind, charged to its stream's `Outbox`."""

    def __init__(self, outbox: Outbox, request_id: str, on_taken: Callable[[], None]):
        self._outbox = outbox
        self._request_id = request_id
        self._on_taken = on_taken        # called when the writer takes one of the request's waiting deltas
        self._parts: list[str] = []
        self._tokens = 0
        self._bytes = 0

    def __bool__(self) -> bool:
        return bool(self._parts)

    def add(self, text: str, token_count: int) -> None:
        nbytes = len(text.encode())
        outbox = self._outbox
        if not outbox.hold(nbytes):
            limits = outbox.budget.limits
            raise ResourceExhausted(
                f"request {self._request_id!r} was stopped because its client read the stream too slowly: "
                f"{outbox.held_bytes + nbytes} bytes of output waited unread on this stream (limit "
                f"{limits.max_buffered_bytes_per_stream}) or {outbox.budget.bytes + nbytes} on this worker "
                f"(limit {limits.max_buffered_bytes_per_worker}); read the stream as it arrives, then Resume the "
                "request (its id and last seq) or send it again")
        if not self._parts:
            outbox.when_taken(self._request_id, self._on_taken)
        self._parts.append(text)
        self._tokens += token_count
        self._bytes += nbytes

    def take(self) -> tuple[str, int, int]:
        """(merged text, tokens it covers, engine deltas merged); nothing is held afterwards."""
        taken = "".join(self._parts), self._tokens, len(self._parts)
        self.drop()
        return taken

    def drop(self) -> None:
        if self._bytes:
            self._outbox.unhold(self._bytes)
        self._parts, self._tokens, self._bytes = [], 0, 0
