"""The requesting side of a cross-worker interrupt against real Redis (Valkey).

Worker B's bus reads the request's record, checks its tenant and state, sets
the interrupt flag and publishes to the owner's channel in one script; here
the owner is a plain subscriber on its interrupt channel that answers on B's
ack channel as an owning worker does, so each test sees exactly what reached
the owner and what was written.
"""

import asyncio
import secrets

import msgpack
import pytest
import redis.asyncio as aioredis

from flint.errors import NotFound
from flint.frontend.interrupts import InterruptBus
from flint.frontend.owner import LocalRequests
from flint.frontend.store import RequestRecord, Store
from flint.respconn import RespConnection


@pytest.fixture
async def bus(valkey_url):
    """B's bus (worker id w-b) and its store, under a prefix of their own."""
    redis, claims = aioredis.Redis.from_url(valkey_url), RespConnection.from_url(valkey_url)
    store = Store(redis, f"bus-{secrets.token_hex(4)}", session_ttl_s=60, request_ttl_s=60, claims=claims)
    bus = InterruptBus(valkey_url, store, "w-b", LocalRequests(), poll_interval_s=0.05, ack_timeout_s=2.0)
    await bus.start()
    try:
        yield bus, store
    finally:
        await bus.stop()
        await claims.close()
        await redis.aclose()


class Owner:
    """Worker A's interrupt channel: records what arrives and acknowledges it with `last_seq`."""

    def __init__(self, bus: InterruptBus, store: Store, last_seq: int):
        self.bus, self.store, self.last_seq = bus, store, last_seq
        self.heard: list[dict] = []
        self._pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
        self._task = None

    async def __aenter__(self):
        await self._pubsub.subscribe(self.bus.interrupt_channel("w-a"))
        self._task = asyncio.ensure_future(self._serve())
        return self

    async def _serve(self):
        async for message in self._pubsub.listen():
            payload = msgpack.unpackb(message["data"])
            self.heard.append(payload)
            await self.store.redis.publish(self.bus.ack_channel(payload["reply_to"]), msgpack.packb(
                {"request_id": payload["request_id"], "nonce": payload["nonce"], "was_running": True,
                 "last_seq": self.last_seq}))

    async def __aexit__(self, *exc):
        self._task.cancel()
        await self._pubsub.aclose()


async def registered(store: Store, request_id: str, *, tenant: str = "t", state: str = "running",
                     last_seq: int = 0) -> None:
    await store.claim_request(RequestRecord(request_id=request_id, owner="w-a", tenant=tenant))
    if state != "running":
        await store.finish_request(RequestRecord(request_id=request_id, owner="w-a", tenant=tenant), state, last_seq)


async def test_a_running_request_gets_its_flag_and_the_owners_message_and_the_owners_ack(bus):
    bus, store = bus
    await registered(store, "t/r-1")
    async with Owner(bus, store, last_seq=7) as owner:
        result = await bus.interrupt("t/r-1", tenant="t")
    assert result.was_running and result.last_seq == 7
    [message] = owner.heard
    assert message["request_id"] == "t/r-1" and message["reply_to"] == "w-b" and message["nonce"]
    assert await store.interrupt_flags(["t/r-1"]) == ["t/r-1"]   # the owner's poll finds it if pub/sub lost it


async def test_another_tenants_request_is_not_found_and_neither_flagged_nor_signalled(bus):
    bus, store = bus
    await registered(store, "r-2", tenant="t")
    async with Owner(bus, store, last_seq=1) as owner:
        with pytest.raises(NotFound, match="r-2"):
            await bus.interrupt("r-2", tenant="other")
        await asyncio.sleep(0.1)
    assert owner.heard == [] and await store.interrupt_flags(["r-2"]) == []


async def test_a_finished_request_reports_its_last_seq_without_signalling_its_owner(bus):
    bus, store = bus
    await registered(store, "t/r-3", state="finished", last_seq=4)
    async with Owner(bus, store, last_seq=99) as owner:
        result = await bus.interrupt("t/r-3", tenant="t")
        await asyncio.sleep(0.1)
    assert not result.was_running and result.last_seq == 4
    assert owner.heard == [] and await store.interrupt_flags(["t/r-3"]) == []


async def test_an_unknown_request_is_not_found(bus):
    bus, store = bus
    with pytest.raises(NotFound, match="never-sent"):
        await bus.interrupt("never-sent", tenant="")


async def test_a_lost_acknowledgement_is_made_up_for_by_the_record(bus):
    """The owner recorded the end but its acknowledgement never came: B's poll of the record answers."""
    bus, store = bus
    await registered(store, "t/r-5")

    async def owner_that_records_but_never_acks():
        await asyncio.sleep(0.1)
        await store.finish_request(RequestRecord(request_id="t/r-5", owner="w-a", tenant="t"), "interrupted", 3)

    recording = asyncio.ensure_future(owner_that_records_but_never_acks())
    result = await asyncio.wait_for(bus.interrupt("t/r-5", tenant="t"), 2)
    await recording
    assert result.was_running and result.last_seq == 3
