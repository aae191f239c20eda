"""A front-end worker's stop is bounded: a part that never finishes (here the interrupt listener, made to ignore
its cancel) is left behind after its time and named in the log, and the rest of the stop still runs.

A clean-clone CI run hung for good in a test's teardown, inside a worker's stop: the replica process the
teardown would have stopped next was still waiting for its SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time

from flint.config import FrontendConfig
from flint.frontend import server as server_module
from flint.frontend.server import FrontendWorker
from flint.valkey import EmbeddedValkey


async def test_a_stuck_part_of_the_stop_is_left_behind_and_named(monkeypatch, caplog):
    valkey = EmbeddedValkey()
    url = valkey.start()
    try:
        worker = FrontendWorker(FrontendConfig(redis_url=url, port=0, http_port=0, reuse_port=False,
                                               internal_token="t" * 32))
        await worker.start()
        monkeypatch.setattr(server_module, "STOP_PART_S", 0.5)
        stuck = asyncio.Event()

        async def never_stops():   # for the stop's purposes: ignores its cancel for longer than the stop waits
            stuck.set()
            until = time.monotonic() + 3
            while time.monotonic() < until:
                try:
                    await asyncio.sleep(until - time.monotonic())
                except asyncio.CancelledError:
                    continue

        bus = worker._bus
        monkeypatch.setattr(bus, "stop", never_stops)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="flint.frontend.server"):
            await asyncio.wait_for(worker.stop(0.1), 10)
        assert stuck.is_set() and time.monotonic() - started < 5
        assert "the interrupt listener did not finish" in caplog.text
        assert worker._pool is None and worker._redis is None, "the parts after the stuck one still ran"
        await asyncio.sleep(3)   # let the stuck part end before the loop closes
    finally:
        valkey.stop()
