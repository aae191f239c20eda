"""The journal's batches against real Redis (Valkey): a request's Accepted waits for its first delta.

Why: the Accepted used to be written while the first token was on its way from the engine, a Redis write
on the event loop between the two. Now it waits up to `start_delay_ms` for the first delta (or anything
else that starts a batch) and goes with it. (The journal's start goes with the request's claim.)
"""

import asyncio
import secrets

import pytest
import redis.asyncio as aioredis

from flint.errors import InvalidArgument
from flint.frontend import events as ev
from flint.frontend.journal import Journal, JournalConfig, RequestJournal
from flint.respconn import RespConnection


@pytest.fixture
async def redis(valkey_url):
    """A redis-py client (reads) and the journal's own connection for its batches, as a worker has them."""
    client, batches = aioredis.Redis.from_url(valkey_url), RespConnection.from_url(valkey_url)
    client.batches = batches
    try:
        yield client
    finally:
        await batches.close()
        await client.aclose()


def journal_of(redis, start_delay_ms: float) -> tuple[Journal, RequestJournal]:
    journal = Journal(redis, f"jb-{secrets.token_hex(4)}", JournalConfig(start_delay_ms=start_delay_ms),
                      batches=redis.batches)
    return journal, RequestJournal(journal, "r-1", begun=True)


async def kinds(journal: Journal) -> list[str]:
    from flint.frontend.render import from_message
    from flint.v1 import flint_pb2 as pb

    return [type(from_message(pb.ServerMessage.FromString(e.message))).__name__ for e in await journal.read("r-1")]


async def test_the_accepted_waits_for_the_first_delta_and_goes_in_its_batch(redis):
    journal, request = journal_of(redis, start_delay_ms=1000)   # far longer than the steps below
    request.write(ev.Accepted("r-1", 3))
    await asyncio.sleep(0.2)
    assert await kinds(journal) == []         # nothing written yet
    request.write(ev.Delta("r-1", 1, "a", 1))
    assert await request.settle()            # the delta started the batch: both are in Redis now
    assert await kinds(journal) == ["Accepted", "Delta"]
    await journal.close()


async def test_an_accepted_with_no_delta_is_written_after_the_delay(redis):
    journal, request = journal_of(redis, start_delay_ms=100)   # a long prefill: no delta comes
    request.write(ev.Accepted("r-1", 3))
    async with asyncio.timeout(10):
        while await kinds(journal) != ["Accepted"]:
            await asyncio.sleep(0.02)
    request.write(ev.Delta("r-1", 1, "a", 1))   # later entries start their batches at once again
    assert await request.settle() and await kinds(journal) == ["Accepted", "Delta"]
    await journal.close()


async def test_closing_the_journal_writes_a_waiting_first_batch(redis):
    journal, request = journal_of(redis, start_delay_ms=1000)
    request.write(ev.Accepted("r-1", 3))
    await journal.close()
    assert await kinds(journal) == ["Accepted"]


async def test_no_delay_writes_the_accepted_at_once(redis):
    journal, request = journal_of(redis, start_delay_ms=0)
    request.write(ev.Accepted("r-1", 3))
    assert await request.settle() and await kinds(journal) == ["Accepted"]
    await journal.close()


async def test_deltas_within_the_delta_delay_go_in_one_batch_without_anyone_waiting_for_it(redis):
    journal = Journal(redis, f"jb-{secrets.token_hex(4)}", JournalConfig(start_delay_ms=0, delta_delay_ms=50),
                      batches=redis.batches)
    request = RequestJournal(journal, "r-1", begun=True)
    request.write(ev.Accepted("r-1", 3))                     # no start delay: its batch goes at once
    assert await request.settle()
    flushes = journal_flushes()
    for seq, text in enumerate("abc", 1):
        request.write(ev.Delta("r-1", seq, text, 1))
    await asyncio.sleep(0.01)
    assert await kinds(journal) == ["Accepted"]              # the deltas wait for more
    async with asyncio.timeout(10):                          # then go on their own (nobody settles them)
        while await kinds(journal) != ["Accepted", "Delta", "Delta", "Delta"]:
            await asyncio.sleep(0.01)
    assert journal_flushes() - flushes == 1
    await journal.close()


def journal_flushes() -> float:
    from flint.observability.metrics import metrics

    return metrics().registry.get_sample_value("flint_redis_call_seconds_count", {"op": "journal_flush"}) or 0


@pytest.mark.parametrize("name", ["start_delay_ms", "delta_delay_ms"])
@pytest.mark.parametrize("bad", [-1, 1001, "5", True])
def test_a_delay_out_of_range_is_refused_with_its_name(name, bad):
    with pytest.raises(InvalidArgument, match=f"journal.{name}"):
        JournalConfig(**{name: bad})


def test_a_wait_shorter_than_uvloops_timer_resolution_does_not_break_the_next_write(valkey_url):
    """uvloop (the worker's default loop) runs a callback due in under half a millisecond as a plain Handle,
    which has no `when()`: the journal kept such a handle as its timer and the next entry's write raised
    AttributeError (a soak run under load hit it: the request was left running). Here the first entry may wait
    0.1 ms, so its timer is such a handle; the second entry, which may wait longer, must still be queued and
    both must reach Redis."""
    import uvloop

    async def main():
        client, batches = aioredis.Redis.from_url(valkey_url), RespConnection.from_url(valkey_url)
        try:
            journal = Journal(client, f"jb-{secrets.token_hex(4)}", JournalConfig(delta_delay_ms=0.1),
                              batches=batches)
            request = RequestJournal(journal, "r-1", begun=True)
            request.write(ev.Delta("r-1", 1, "a", 1))       # a timer due in 0.1 ms: uvloop gives a plain Handle
            request.write(ev.Accepted("r-1", 3))            # may wait 100 ms: compares with that timer
            assert await request.settle()
            assert sorted(await kinds(journal)) == ["Accepted", "Delta"]
            await journal.close()
        finally:
            await batches.close()
            await client.aclose()

    uvloop.run(main())


async def client_info(redis, client_id: int) -> dict:
    return next(c for c in await redis.client_list() if c["id"] == str(client_id))


async def test_the_ends_batch_goes_to_redis_while_a_batch_before_it_awaits_its_reply(redis):
    """About 15% of cross-worker interrupts found a delta batch in flight, and the batch with the record of the
    end (and the interrupter's acknowledgement) waited for that batch's reply before it was sent. Now it is
    written at once, behind it on the same connection (so Redis runs it after), and both settle."""
    journal, request = journal_of(redis, start_delay_ms=0)
    client_id = await redis.batches.call("CLIENT", "ID")
    record = f"{journal.prefix}:req:r-1"
    await redis.client_pause(10_000, all=False)            # writes wait in Valkey: the first batch has no reply
    try:
        request.write(ev.Accepted("r-1", 3))               # goes at once
        async with asyncio.timeout(5):
            while (info := await client_info(redis, client_id))["cmd"] != "xadd":
                await asyncio.sleep(0.005)
        read = int(info["tot-net-in"])
        assert request.then([(record, b"ended", 60_000)])   # the record of the end, behind it
        async with asyncio.timeout(5):                     # its bytes reached Valkey (they wait there)
            while int((await client_info(redis, client_id))["tot-net-in"]) == read:
                await asyncio.sleep(0.005)
    finally:
        await redis.client_unpause()
    assert await request.settle()
    assert await kinds(journal) == ["Accepted"] and await redis.get(record) == b"ended"
    await journal.close()


async def test_a_batch_on_a_killed_connection_marks_its_requests_incomplete_and_the_next_batch_reconnects(redis):
    journal = Journal(redis, f"jb-{secrets.token_hex(4)}", JournalConfig(start_delay_ms=0), batches=redis.batches)
    lost, later = RequestJournal(journal, "r-1", begun=True), RequestJournal(journal, "r-2", begun=True)
    client_id = await redis.batches.call("CLIENT", "ID")
    await redis.client_pause(10_000, all=False)
    try:
        lost.write(ev.Accepted("r-1", 3))
        async with asyncio.timeout(5):
            while (await client_info(redis, client_id))["cmd"] != "xadd":
                await asyncio.sleep(0.005)
        await redis.client_kill_filter(_id=client_id)     # the batch's reply never comes
    finally:
        await redis.client_unpause()
    assert not await lost.settle()                          # its journal is incomplete, and marked so in Redis
    assert await journal.has_gap("r-1") and "r-1" in journal.incomplete
    later.write(ev.Accepted("r-2", 3))                      # a new connection carries the next batch
    assert await later.settle()
    assert await redis.batches.call("CLIENT", "ID") != client_id
    await journal.close()
