"""Graceful drain and rolling upgrade: every front-end worker and replica is replaced under load, no request lost."""

import asyncio
import random

from flint.client import FlintClient
from rel_support import expected_text


async def keystroke_load(address: str, stop: asyncio.Event, results: dict, streams: int = 4) -> None:
    async with FlintClient(address) as client:
        async def one_stream(i: int) -> None:
            while not stop.is_set():
                prefix = f"def f{i}_{random.randrange(10**6)}("
                try:
                    text = await client.complete_text(prefix, max_tokens=15, timeout_s=60)
                    results["ok" if text == expected_text(prefix, 15) else "wrong"] += 1
                except Exception as exc:  # noqa: BLE001 - counted; the test asserts there are none
                    results.setdefault("errors", []).append(repr(exc))

        await asyncio.gather(*(one_stream(i) for i in range(streams)))
        results["resumes"] = client.resumes


async def test_rolling_restart_of_every_worker_and_replica_under_load(cluster):
    await cluster.add_replica_process("r-old", token_interval_s=0.01)
    first = await cluster.add_worker_process("w-old-1", reuse_port=True, grace_period_s=5.0)
    port = int(first.rsplit(":", 1)[1])
    await cluster.add_worker_process("w-old-2", port=port, reuse_port=True, grace_period_s=5.0)
    stop, results = asyncio.Event(), {"ok": 0, "wrong": 0}
    load = asyncio.create_task(keystroke_load(first, stop, results))
    await asyncio.sleep(1.0)
    # Replica: start the new one, then drain the old one (it leaves the registry first, then finishes streams).
    await cluster.add_replica_process("r-new", token_interval_s=0.01)
    await asyncio.to_thread(cluster.stop_process("r-old").wait, 30)
    # Front-end workers, one at a time, on the shared port (SO_REUSEPORT): new in, old drained out.
    for old, new in (("w-old-1", "w-new-1"), ("w-old-2", "w-new-2")):
        await cluster.add_worker_process(new, port=port, reuse_port=True, grace_period_s=5.0)
        await asyncio.to_thread(cluster.stop_process(old).wait, 30)
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.wait_for(load, 120)
    assert not results.get("errors"), results.get("errors")[:3]
    assert results["wrong"] == 0 and results["ok"] > 20
