"""The resume journal: every message a client is sent, kept briefly in Redis.

Why: a client that loses its front-end worker reconnects to any worker with
(request id, last seq) and must get every missing delta exactly once. The
request's owner queues each event for the journal and delivers it at once;
the journal follows in batches, off the per-delta path. So a client may hold
a few deltas the journal lacks when the owner dies: a resume then runs the
request again (deterministic: the seed is pinned, greedy is greedy), checks
the regenerated text against the journal, numbers the regenerated deltas
exactly as the dead owner did (one engine delta, one client delta) and
skips those the client has (flint.frontend.owner). Every end of a request
waits for its journal to settle before it is recorded, so a request whose
record is no longer running has its whole journal in Redis.

Keys (prefix `flint` by default):
  {p}:journal:{request_id}       Redis stream, one entry per ServerMessage:
                                 m = serialized flint.v1.ServerMessage,
                                 s = seq (0 for accepted / terminal messages),
                                 c = characters of completion text up to here,
                                 t = 1 on the terminal entry (final or error)
  {p}:journal:{request_id}:meta  msgpack {request: engine GenerateRequest bytes,
                                 tenant, created_unix_s}: what a resume needs to
                                 regenerate a request whose owner is gone

Bounded: at most `max_deltas` entries per request (oldest trimmed), and every
key expires `ttl_s` after its last write. Writes are group-committed: every
entry queued in one event-loop turn goes out in one pipeline, written at once
on the journal's own connection (flint.respconn) without waiting for the
previous pipeline's reply (Redis runs them in the order written, so a request's
entries and its record of the end stay in order); an entry may also wait
briefly for others (`start_delay_ms`, `delta_delay_ms`), so a short request's
entries and its record of the end share one round trip.
A Redis outage never stops a stream: a batch that fails or does not settle
within `write_timeout_ms` marks the request's journal incomplete (a gap key),
and a later resume of it fails clearly instead of sending a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

import msgpack

from flint.config import from_mapping
from flint.errors import InvalidArgument
from flint.frontend import events as ev
from flint.frontend.render import to_message
from flint.records import unpack_record
from flint.observability.metrics import metrics
from flint.respconn import RespConnection

log = logging.getLogger(__name__)

MAX_PENDING_ENTRIES = 100_000  # entries queued while Redis is slow; past this a request's journal is dropped


@dataclass(frozen=True)
class JournalConfig:
    """`FrontendConfig.journal`: how much of each request is kept for resume, and for how long."""

    enabled: bool = True
    max_deltas: int = 4096             # entries kept per request; resuming before the oldest fails clearly
    ttl_s: float = 600.0               # a journal expires this long after its last write
    write_timeout_ms: float = 500.0    # an append slower than this is dropped (the stream keeps going)
    worker_ttl_s: float = 3.0          # a worker that misses heartbeats this long is dead: its requests move
    poll_interval_ms: float = 200.0    # a resume re-checks the owner's liveness this often while tailing
    # A request's Accepted may wait up to this long for the first delta to join its batch, so no Redis write
    # competes with the prefill or comes between the engine's first token and the client (0.4-0.8 ms of TTFT
    # on 2 shared cores, loadtests/results/relay-ttft-20261130). The journal's start (its metadata) is written
    # with the request's claim, so a Resume in that window finds the request and follows it. A cancel, an
    # interrupt or the end writes the batch at once; 0 = the Accepted at once. (A request's terminal entry
    # waits the same way for its record of the end, which follows at once.)
    start_delay_ms: float = 100.0
    # A delta's entry may wait up to this long for more entries (the next deltas, a short request's Final and
    # record of the end) to join its batch: fewer Redis round trips on the worker's event loop (a one-token
    # request makes two: its claim and one batch). A resume that follows a running request sees its deltas
    # that much later at most; an interrupt, a cancel, the end and a merged delta write the batch at once.
    delta_delay_ms: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.max_deltas, int) or self.max_deltas < 16:
            raise InvalidArgument(f"journal.max_deltas must be an integer >= 16, got {self.max_deltas!r}")
        for name in ("start_delay_ms", "delta_delay_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 1000:
                raise InvalidArgument(f"journal.{name} must be between 0 and 1000, got {value!r}")
        for name in ("ttl_s", "write_timeout_ms", "worker_ttl_s", "poll_interval_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value <= 0:
                raise InvalidArgument(f"journal.{name} must be > 0, got {value!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "JournalConfig":
        return from_mapping(cls, data, where="journal config")


@dataclass(frozen=True)
class Entry:
    """One journaled message, as read back."""

    stream_id: bytes
    message: bytes                     # serialized flint.v1.ServerMessage
    seq: int
    chars: int
    terminal: bool


@dataclass(frozen=True)
class JournalMeta:
    request: bytes                     # serialized flint.internal.v1.GenerateRequest
    tenant: str
    model: str
    created_unix_s: float


class Journal:
    """Group-committed appends through `batches` (flint.respconn: each batch is written at once, never behind
    the previous batch's reply, and runs in Redis in the order written), reads through a `redis.asyncio`
    client."""

    def __init__(self, redis, key_prefix: str, config: JournalConfig, *, batches: RespConnection):
        self.redis = redis
        self.batches = batches
        self.prefix = key_prefix
        self.config = config
        self._pending: list[tuple[str, dict | tuple]] = []  # entries (or journal starts) of the next batch
        self._batch: asyncio.Future | None = None       # resolved when the next batch is in Redis
        self._sending: asyncio.Handle | None = None     # the loop turn that sends what is pending
        self._in_flight: set[asyncio.Future] = set()    # batches sent, not yet answered
        self._in_flight_entries = 0
        self._delayed: asyncio.Handle | None = None   # when pending entries that may wait must go (`wait_ms`)
        self._delayed_due = 0.0                         # its due time, loop.time()
        self.incomplete: set[str] = set()   # requests whose journal lost an append (this process)
        self.dropped_appends = 0

    # ------------------------------------------------------------ keys
    def stream_key(self, request_id: str) -> str:
        return f"{self.prefix}:journal:{request_id}"

    def meta_key(self, request_id: str) -> str:
        return f"{self.prefix}:journal:{request_id}:meta"

    def gap_key(self, request_id: str) -> str:
        return f"{self.prefix}:journal:{request_id}:gap"

    @property
    def _ttl_ms(self) -> int:
        return int(self.config.ttl_s * 1000)

    # ------------------------------------------------------------ writing
    def begin_writes(self, request_id: str, engine_request: bytes, *, tenant: str = "",
                     model: str = "") -> tuple[list[str], list[tuple[str, bytes, int]]]:
        """The keys to delete and (key, value, ttl_ms) to set that start a request's journal: what is needed to
        regenerate it, and no older journal under this id. Run them with the request's claim (Store), and give
        its `RequestJournal` `begun=True`."""
        meta = msgpack.packb({"request": engine_request, "tenant": tenant, "model": model,
                              "created_unix_s": time.time()})
        self.incomplete.discard(request_id)
        return [self.stream_key(request_id), self.gap_key(request_id)], [(self.meta_key(request_id), meta,
                                                                           self._ttl_ms)]

    async def begin(self, request_id: str, engine_request: bytes, *, tenant: str = "", model: str = "") -> None:
        """Start a request's journal on its own (a request's start does it with its claim instead)."""
        deletes, writes = self.begin_writes(request_id, engine_request, tenant=tenant, model=model)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(*deletes)
            for key, value, ttl_ms in writes:
                pipe.set(key, value, px=ttl_ms)
            await pipe.execute()

    def write(self, request_id: str, message: bytes, *, seq: int = 0, chars: int = 0,
              terminal: bool = False, wait_ms: float = 0.0) -> asyncio.Future | None:
        """Queue one message for the next batch, without waiting. Returns the batch's future (True once the
        batch is in Redis, False if it failed), or None if the entry was dropped. `wait_ms`: how long the entry
        may wait for others to join its batch (0: the batch goes as soon as it can)."""
        if request_id in self.incomplete:
            return None
        if len(self._pending) + self._in_flight_entries >= MAX_PENDING_ENTRIES:  # Redis stalled: bound memory
            self._mark_incomplete(request_id, "dropped: the journal backlog is full")
            return None
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        self._pending.append((request_id, {"m": message, "s": seq, "c": chars, "t": int(terminal)}))
        self._kick(wait_ms)
        return self._batch

    def write_after(self, request_id: str, writes: list[tuple[str, bytes, int]],
                    publishes: list[tuple[str, bytes]] = ()) -> asyncio.Future:
        """Queue `writes` ((key, value, ttl_ms) each), then `publishes` ((channel, message) each), behind the
        request's entries queued so far (batches run in Redis in the order they are sent, on one connection,
        each in order), and send the batch; returns its future, like `write`."""
        if self._batch is None:
            self._batch = asyncio.get_running_loop().create_future()
        self._pending.append((request_id, (tuple(writes), tuple(publishes))))
        self._kick()
        return self._batch

    def _kick(self, wait_ms: float = 0.0) -> None:
        """Send what is pending at the end of this loop turn (everything queued in the turn goes as one batch,
        without waiting for a batch still in flight); with `wait_ms`, within that time unless something else
        sends it first. Entries that may wait never send a batch on their own before their time."""
        loop = asyncio.get_running_loop()
        if self._sending is not None:
            return   # what is pending goes with the send already due this turn
        if wait_ms:
            due = loop.time() + wait_ms / 1000.0
            if self._delayed is None or self._delayed_due > due:
                if self._delayed is not None:
                    self._delayed.cancel()
                # The due time is kept here: uvloop returns a plain Handle, with no when(), for a callback due
                # within half a millisecond.
                self._delayed, self._delayed_due = loop.call_at(due, self._delay_over), due
        elif self._pending:
            self._sending = loop.call_soon(self._send)

    def _delay_over(self) -> None:
        self._delayed = None
        self._kick()

    def _send(self) -> None:
        """Write every pending entry as one pipeline; its reply settles the batch's future."""
        self._sending = None
        if self._delayed is not None:
            self._delayed.cancel()
            self._delayed = None
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        done, self._batch = self._batch, None
        try:
            sent = self.batches.send(self._commands(batch))
        except Exception as exc:  # noqa: BLE001 - a value Redis cannot take: these journals are incomplete
            sent = asyncio.get_running_loop().create_future()
            sent.set_exception(exc)
        self._in_flight.add(sent)
        self._in_flight_entries += len(batch)
        timer = metrics().time_redis("journal_flush").__enter__()
        sent.add_done_callback(lambda _: self._answered(sent, batch, done, timer))

    def _commands(self, batch: list[tuple[str, dict | tuple]]) -> list[tuple]:
        commands, maxlen = [], self.config.max_deltas
        for request_id, fields in batch:
            if isinstance(fields, tuple):  # writes behind a request's entries (write_after)
                writes, publishes = fields
                commands += [(b"SET", key, value, b"PX", ttl_ms) for key, value, ttl_ms in writes]
                commands += [(b"PUBLISH", channel, message) for channel, message in publishes]
            else:
                commands.append((b"XADD", self.stream_key(request_id), b"MAXLEN", maxlen, b"*", b"m", fields["m"],
                                 b"s", fields["s"], b"c", fields["c"], b"t", fields["t"]))
        for request_id in {r for r, _ in batch}:
            commands.append((b"PEXPIRE", self.stream_key(request_id), self._ttl_ms))
            commands.append((b"PEXPIRE", self.meta_key(request_id), self._ttl_ms))
        return commands

    def _answered(self, sent: asyncio.Future, batch: list, done: asyncio.Future, timer) -> None:
        timer.__exit__(None, None, None)
        self._in_flight.discard(sent)
        self._in_flight_entries -= len(batch)
        error = asyncio.CancelledError() if sent.cancelled() else sent.exception()
        if error is None:
            error = next((reply for reply in sent.result() if isinstance(reply, Exception)), None)
        if error is not None:  # Redis blips must not stop any stream: the requests' journals are incomplete
            log.warning("journal write of %d entries failed: %s", len(batch), error)
            for request_id in {r for r, _ in batch}:
                self._mark_incomplete(request_id, "failed")
        if not done.done():
            done.set_result(error is None)

    async def settle(self, request_id: str, batch: asyncio.Future | None) -> bool:
        """Wait (at most write_timeout_ms) until the batch holding a request's last entry is in Redis; True if
        every entry of the request got there. A batch still waiting (`wait_ms`) goes now."""
        if batch is not None:
            if not batch.done():
                self._kick()
            # asyncio.wait, not wait_for: it never cancels the shared batch and never swallows a cancellation
            # of the caller that races with the write completing (wait_for does on 3.11).
            await asyncio.wait({batch}, timeout=self.config.write_timeout_ms / 1000.0)
            if not batch.done():
                self._mark_incomplete(request_id, "timed out")
        return request_id not in self.incomplete

    async def append(self, request_id: str, message: bytes, *, seq: int = 0, chars: int = 0,
                     terminal: bool = False) -> bool:
        """Journal one message and wait until it is in Redis; False if it was dropped (Redis slow or down)."""
        return await self.settle(request_id, self.write(request_id, message, seq=seq, chars=chars,
                                                        terminal=terminal))

    def _mark_incomplete(self, request_id: str, why: str) -> None:
        if request_id not in self.incomplete:
            log.warning("journal of request %s is incomplete (append %s); it cannot be resumed", request_id, why,
                        extra={"request_id": request_id})
        self.incomplete.add(request_id)
        self.dropped_appends += 1
        metrics().journal_dropped.inc()

    async def mark_gap(self, request_id: str) -> None:
        """Persist that this request's journal has a hole, so resumes elsewhere refuse instead of guessing."""
        with contextlib.suppress(Exception):
            await self.redis.set(self.gap_key(request_id), b"1", px=self._ttl_ms)

    async def close(self) -> None:
        """Send what is still waiting and wait (at most write_timeout_ms) for the batches in flight."""
        if self._sending is not None:
            self._sending.cancel()
        self._send()
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.config.write_timeout_ms / 1000.0)

    # ------------------------------------------------------------ reading
    async def meta(self, request_id: str) -> JournalMeta | None:
        key = self.meta_key(request_id)
        return unpack_record(JournalMeta, await self.redis.get(key), where=key)

    async def has_gap(self, request_id: str) -> bool:
        return bool(await self.redis.exists(self.gap_key(request_id)))

    async def read(self, request_id: str, after: bytes = b"-", *, block_ms: int | None = None) -> list[Entry]:
        """Entries after stream id `after` ("-" = from the start); with block_ms, wait that long for new ones."""
        key = self.stream_key(request_id)
        if block_ms is None:
            start = b"-" if after == b"-" else b"(" + after
            rows = await self.redis.xrange(key, min=start)
        else:
            answer = await self.redis.xread({key: b"0-0" if after == b"-" else after}, block=block_ms,
                                            count=1024)
            rows = answer[0][1] if answer else []
        return [_entry(stream_id, fields) for stream_id, fields in rows]


def _entry(stream_id: bytes, fields: dict) -> Entry:
    return Entry(stream_id=stream_id, message=fields[b"m"], seq=int(fields[b"s"]), chars=int(fields[b"c"]),
                 terminal=fields[b"t"] == b"1")


class RequestJournal:
    """The journal of one request as its owner sees it: queues events, counts text offsets, never raises."""

    def __init__(self, journal: Journal, request_id: str, *, chars: int = 0, begun: bool = False):
        self._journal = journal
        self.request_id = request_id
        self.chars = chars               # characters of completion text journaled so far
        self._last: asyncio.Future | None = None
        self._gap_marked = False
        # This request's claim started the journal (`Journal.begin_writes`) and nothing is journaled yet: a
        # request that ends so (the engine refused it) journals nothing and leaves no metadata behind.
        self._fresh = begun

    def unused_keys(self) -> list[str]:
        """The journal's keys to delete at the end of a request that journaled nothing (see `begun`)."""
        return [self._journal.meta_key(self.request_id)] if self._fresh else []

    def write(self, event: ev.Event) -> None:
        """Queue a front-end event (flint.frontend.events) for the journal; it is delivered meanwhile. A new
        request's first event is the Accepted its engine's Started becomes; a terminal event before it is not
        journaled: there is nothing to resume."""
        if self._fresh:
            if ev.is_terminal(event):
                return
            self._fresh = False
        seq = 0
        if isinstance(event, ev.Delta):
            seq = event.seq
            self.chars += len(event.text)
        # An Accepted waits (briefly) for the first delta: the batch then follows that delta to the client. A
        # terminal entry waits for the record of the end its owner queues next (`then`), which starts
        # the batch: one round trip for both. A delta waits a little for the next entries.
        terminal = ev.is_terminal(event)
        config = self._journal.config
        wait_ms = config.delta_delay_ms if isinstance(event, ev.Delta) else config.start_delay_ms
        batch = self._journal.write(self.request_id, to_message(event).SerializeToString(), seq=seq,
                                    chars=self.chars, terminal=terminal, wait_ms=wait_ms)
        if batch is not None:
            self._last = batch

    def then(self, writes: list[tuple[str, bytes, int]], publishes: list[tuple[str, bytes]] = ()) -> bool:
        """Queue `writes` ((key, value, ttl_ms) each) and then `publishes` ((channel, message) each) behind the
        request's last entry, so they reach Redis in that entry's round trip, after it, and send the batch now;
        False if they cannot (the journal is incomplete, or has nothing of this request): then `settle` and make
        them yourself. True: `settle` says whether the journal and they got there."""
        if self._last is None or self.request_id in self._journal.incomplete:
            return False
        self._last = self._journal.write_after(self.request_id, writes, publishes)
        return True

    async def settle(self) -> bool:
        """Wait until everything written is in Redis; a journal that lost entries is marked with a gap."""
        ok = await self._journal.settle(self.request_id, self._last)
        if not ok and not self._gap_marked:
            self._gap_marked = True
            await self._journal.mark_gap(self.request_id)
        return ok


def pin_seed(engine_request) -> None:
    """Give a sampled request without a seed a random one, so running it again (resume) reproduces it."""
    sampling = engine_request.sampling
    if sampling.temperature > 0 and not sampling.has_seed:
        sampling.has_seed = True
        sampling.seed = secrets.randbits(63)
