"""Interrupts that reach the owning worker, whichever worker receives them.

Pub/sub is at-most-once, so every interrupt is sent two ways: a message on
the owner's channel (fast path) and a flag key the owner polls for all of
its running requests with one MGET per interval (backup). The requesting
worker reads the request's record, checks its tenant and state, sets the
flag and publishes in one script (one round trip). The owner stops
relaying, cancels the engine call, delivers the interrupted Final and
records the final state and last seq in the request registry; the
acknowledgement on the requester's ack channel rides that record's round
trip, after it (flint.frontend.owner), or, when the owner had already
ended, follows it. The requester also polls that record, so a lost
acknowledgement only costs one poll interval. The subscriber uses its own
Redis connection, as a connection in subscribe mode can run no other
command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

import msgpack

from flint.errors import NotFound, Unavailable
from flint.frontend.store import RequestRecord, Store
from flint.frontend.validate import public_request_id
from flint.records import unpack_record

log = logging.getLogger(__name__)

# An interrupt's request side in one round trip: read the request's record (KEYS[1]) and, only if it belongs to
# tenant ARGV[1] and is running, set its interrupt flag (KEYS[2], PX ARGV[2]) and publish ARGV[5] on its owner's
# channel (ARGV[3] .. owner .. ARGV[4]). Returns {record or nil, 1 if published else 0}.
_INTERRUPT = """
local current = redis.call('GET', KEYS[1])
if not current then
  return {false, 0}
end
local ok, rec = pcall(cmsgpack.unpack, current)
if not ok or type(rec) ~= 'table' or rec['tenant'] ~= ARGV[1] or rec['state'] ~= 'running'
    or type(rec['owner']) ~= 'string' then
  return {current, 0}
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3] .. rec['owner'] .. ARGV[4], ARGV[5])
return {current, 1}
"""


@dataclass(frozen=True)
class InterruptResult:
    request_id: str
    was_running: bool
    last_seq: int
    acknowledged: bool = False   # the owner published the requester's acknowledgement (`AckTo`) with its end


@dataclass(frozen=True)
class AckTo:
    """Where the acknowledgement of a cross-worker interrupt goes: the requester's ack channel and its nonce."""

    channel: str
    nonce: str

    def message(self, result: InterruptResult) -> bytes:
        return msgpack.packb({"request_id": result.request_id, "nonce": self.nonce,
                              "was_running": result.was_running, "last_seq": result.last_seq})


class Interruptible(Protocol):
    async def interrupt(self) -> InterruptResult: ...
    def interrupt_soon(self, ack: AckTo | None = None) -> "asyncio.Future[InterruptResult]": ...


class Owned(Protocol):
    """The requests this worker owns (flint.frontend.owner.LocalRequests)."""

    def get(self, request_id: str) -> Interruptible | None: ...
    def ids(self) -> list[str]: ...
    def __len__(self) -> int: ...


class InterruptBus:
    def __init__(self, redis_url: str, store: Store, worker_id: str, local: Owned, *,
                 poll_interval_s: float, ack_timeout_s: float):
        self._redis_url = redis_url
        self._store = store
        self._worker_id = worker_id
        self._local = local
        self._poll_interval_s = poll_interval_s
        self._ack_timeout_s = ack_timeout_s
        self._acks: dict[str, asyncio.Future] = {}
        self._sub_redis = None
        self._pubsub = None
        self._tasks: set[asyncio.Task] = set()
        self._signal = store.redis.register_script(_INTERRUPT)  # EVALSHA after the first call
        self._channel_ends = (f"{store.prefix}:worker:", ":interrupt")   # an interrupt channel, around the owner

    def interrupt_channel(self, worker_id: str) -> str:
        head, tail = self._channel_ends
        return f"{head}{worker_id}{tail}"

    def ack_channel(self, worker_id: str) -> str:
        return f"{self._store.prefix}:worker:{worker_id}:acks"

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._sub_redis = aioredis.Redis.from_url(self._redis_url)
        await self._subscribe()
        self._spawn(self._listen_forever(), "interrupt listener")
        self._spawn(self._poll_flags(), "interrupt flag poller")

    async def _subscribe(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        self._pubsub = self._sub_redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.interrupt_channel(self._worker_id), self.ack_channel(self._worker_id))

    async def _listen_forever(self) -> None:
        """`_listen`, subscribing again with backoff (0.1 s doubling to 5 s) when Redis goes away."""
        backoff_s = 0.1
        while True:
            try:
                await self._listen()
                raise ConnectionError("the pub/sub connection ended")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis restarted or unreachable: subscribe again
                log.warning("interrupt listener lost its subscription (%s); subscribing again in %.1f s",
                            exc, backoff_s)
            await asyncio.sleep(backoff_s)
            try:
                await self._subscribe()
                log.info("interrupt listener subscribed again")
                backoff_s = 0.1
            except Exception as exc:  # noqa: BLE001 - still down: wait longer
                log.warning("interrupt listener could not subscribe yet: %s", exc)
                backoff_s = min(5.0, backoff_s * 2)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self._sub_redis is not None:
            await self._sub_redis.aclose()

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------- requester side
    async def interrupt(self, request_id: str, *, tenant: str = "") -> InterruptResult:
        """Stop tenant `tenant`'s `request_id` wherever it runs; returns once its owner has stopped relaying and
        recorded the end. NOT_FOUND when no such request of that tenant is known (another tenant's looks
        unknown): its record is gone, or, while only this worker knows it, this worker does not run it."""
        local = self._local.get(request_id)
        if local is not None and local.record.tenant == tenant:
            return await local.interrupt()
        nonce = secrets.token_hex(8)
        ack = asyncio.get_running_loop().create_future()
        self._acks[nonce] = ack
        try:
            message = msgpack.packb({"request_id": request_id, "reply_to": self._worker_id, "nonce": nonce})
            stored, published = await self._signal(
                keys=[self._store.request_key(request_id), self._store.flag_key(request_id)],
                args=[tenant, self._store.request_ttl_ms, *self._channel_ends, message])
            record = unpack_record(RequestRecord, stored, where=self._store.request_key(request_id))
            if not published:
                if record is None or record.tenant != tenant:
                    raise NotFound(f"no request with id {public_request_id(request_id)!r} (it never existed here or "
                                   "expired); check the id from the Accepted message")
                return InterruptResult(request_id, False, record.last_seq)
            deadline = time.monotonic() + self._ack_timeout_s
            while True:
                with contextlib.suppress(asyncio.TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(ack), self._poll_interval_s)
                record = await self._store.get_request(request_id)  # ack lost? the record tells
                if record is not None and not record.running:
                    return InterruptResult(request_id, record.state == "interrupted", record.last_seq)
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"front-end worker {record.owner if record else '?'} owning request {request_id!r} "
                        f"did not acknowledge the interrupt within {self._ack_timeout_s:g} s; "
                        "it stops the request when it next sees the interrupt flag. Retry to confirm.")
        finally:
            self._acks.pop(nonce, None)

    # ---------------------------------------------------------------- owner side
    async def _listen(self) -> None:
        ack_channel = self.ack_channel(self._worker_id).encode()
        async for message in self._pubsub.listen():
            if message.get("type") != "message":
                continue
            try:
                payload = msgpack.unpackb(message["data"])
                if message["channel"] == ack_channel:
                    future = self._acks.get(payload["nonce"])
                    if future is not None and not future.done():
                        future.set_result(InterruptResult(payload["request_id"], payload["was_running"],
                                                          payload["last_seq"]))
                else:
                    if not all(isinstance(payload[k], str) for k in ("request_id", "nonce", "reply_to")):
                        raise TypeError("request_id, nonce and reply_to must be strings")
                    self._serve_interrupt(payload)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring malformed pub/sub message on %s: %s", message["channel"], exc)

    def _serve_interrupt(self, payload: dict) -> None:
        """Start the interrupt in this step (the owner delivers the interrupted Final and queues the record of the
        end with the acknowledgement behind it); acknowledge here only if the owner did not."""
        request_id = payload["request_id"]
        ack = AckTo(self.ack_channel(payload["reply_to"]), payload["nonce"])
        local = self._local.get(request_id)
        try:
            answer = local.interrupt_soon(ack) if local is not None else None
        except Exception:  # noqa: BLE001 - the listener outlives any one request; the flag poll retries it
            log.exception("interrupt of request %s failed to start", request_id)
            return
        self._spawn(self._acknowledge(request_id, ack, answer), "interrupt acknowledgement")

    async def _acknowledge(self, request_id: str, ack: AckTo, answer: asyncio.Future | None) -> None:
        if answer is not None:
            result = await answer
            if result.acknowledged:
                return
        else:  # already finished (or never ours): report what the registry knows
            record = await self._store.get_request(request_id)
            result = InterruptResult(request_id, False, record.last_seq if record else 0)
        await self._store.redis.publish(ack.channel, ack.message(result))

    async def _poll_flags(self) -> None:
        """Poll the interrupt flags of local requests; every third of the record TTL, refresh their records."""
        refresh_every_s = self._store.request_ttl_ms / 3000.0
        refreshed = time.monotonic()
        while True:
            await asyncio.sleep(self._poll_interval_s)
            if not self._local:
                continue
            try:
                if time.monotonic() - refreshed >= refresh_every_s:
                    refreshed = time.monotonic()
                    await self._store.refresh_requests(self._local.ids())
                flagged = await self._store.interrupt_flags(self._local.ids())
            except Exception as exc:  # noqa: BLE001 - keep polling through Redis blips
                log.warning("interrupt flag poll failed: %s", exc)
                continue
            for request_id in flagged:
                local = self._local.get(request_id)
                if local is not None:
                    self._spawn(local.interrupt(), "flagged interrupt")
