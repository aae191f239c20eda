"""The per-stream Outbox on its own: queue order, the per-request backlog that starts merging, the hook that
releases held text, journal-first delivery of merged deltas, a waiting producer, and the byte caps."""

import asyncio

import pytest

from flint.errors import ResourceExhausted
from flint.frontend import events as ev
from flint.frontend.outbox import BufferBudget, BufferLimits, HeldText, Outbox


def delta(rid: str, seq: int, text: str = "x") -> ev.Delta:
    return ev.Delta(rid, seq, text, 1)


def outbox(**limits) -> Outbox:
    return Outbox(BufferBudget(BufferLimits(**{"queued_deltas_per_request": 2, **limits})))


async def test_a_request_is_backed_up_once_its_queue_of_deltas_is_full_and_taking_one_calls_its_hook():
    box, taken = outbox(), []
    box.put(delta("a", 1))
    box.put(delta("b", 1))
    assert not box.backed_up("a")
    box.put(delta("a", 2))
    assert box.backed_up("a") and not box.backed_up("b")
    box.when_taken("a", lambda: taken.append("a"))
    assert [await box.get() for _ in range(2)] == [delta("a", 1), delta("b", 1)]
    assert taken == ["a"] and not box.backed_up("a")
    assert await box.get() == delta("a", 2) and taken == ["a"]   # the hook fires once


async def test_a_merged_delta_waits_for_its_settle_before_the_writer_gets_it():
    box, settled = outbox(), asyncio.Event()

    async def settle():
        await settled.wait()

    box.settle_first("a", settle)
    box.put(delta("a", 1, "merged"))
    get = asyncio.ensure_future(box.get())
    await asyncio.sleep(0.05)
    assert not get.done()
    settled.set()
    assert (await get).text == "merged"


async def test_room_waits_while_the_request_is_backed_up():
    box = outbox()
    box.put(delta("a", 1))
    box.put(delta("a", 2))
    room = asyncio.ensure_future(box.room("a"))
    await asyncio.sleep(0.05)
    assert not room.done()
    await box.get()
    await asyncio.wait_for(room, 1)


def test_held_text_is_capped_per_stream_and_per_worker_and_released_in_full():
    budget = BufferBudget(BufferLimits(max_buffered_bytes_per_stream=2048, max_buffered_bytes_per_worker=3072))
    one, two = Outbox(budget), Outbox(budget)
    held_one, held_two = HeldText(one, "a", lambda: None), HeldText(two, "b", lambda: None)
    held_one.add("x" * 2000, 5)
    assert one.hold(100) is False                               # the stream's cap
    held_two.add("y" * 1000, 3)
    with pytest.raises(ResourceExhausted, match="read the stream too slowly"):
        held_two.add("y" * 100, 1)                              # the worker's cap
    assert budget.bytes == 3000 and budget.refused == 2
    assert held_one.take() == ("x" * 2000, 5, 1) and not held_one
    held_two.drop()
    assert budget.bytes == 0 and budget.peak_bytes == 3000
