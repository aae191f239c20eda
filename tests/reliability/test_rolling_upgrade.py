"""Graceful drain and rolling upgrade: every front-end worker and replica is replaced under load, no request lost.

Replicas are processes running the real engine (rel_support.py); every
completion is compared with the same request run alone and uninterrupted.
"""

import asyncio
import itertools

from flint.client import FlintClient

TOKENS = 60  # per completion
PROMPTS = [[f"def f{i}_{k}(" for k in range(3)] for i in range(4)]  # per stream, reused (keystrokes share prefixes)


async def keystroke_load(address: str, stop: asyncio.Event, results: dict, expected: dict) -> None:
    async with FlintClient(address) as client:
        async def one_stream(prompts: list[str]) -> None:
            for prefix in itertools.cycle(prompts):
                if stop.is_set():
                    return
                try:
                    text = await client.complete_text(prefix, max_tokens=TOKENS, timeout_s=60)
                    results["ok" if text == expected[prefix] else "wrong"] += 1
                except Exception as exc:  # noqa: BLE001 - counted; the test asserts there are none
                    results.setdefault("errors", []).append(repr(exc))
                await asyncio.sleep(0.05)  # the editor's typing gap

        await asyncio.gather(*(one_stream(prompts) for prompts in PROMPTS))
        results["resumes"] = client.resumes


async def test_rolling_restart_of_every_worker_and_replica_under_load(cluster, reference):
    prompts = [prefix for stream in PROMPTS for prefix in stream]
    expected = asyncio.gather(*(reference.atext(prefix, TOKENS) for prefix in prompts))  # while processes start
    await cluster.add_replica_process("r-old")
    first = await cluster.add_worker_process("w-old-1", reuse_port=True, grace_period_s=5.0)
    port = int(first.rsplit(":", 1)[1])
    await cluster.add_worker_process("w-old-2", port=port, reuse_port=True, grace_period_s=5.0)
    stop, results = asyncio.Event(), {"ok": 0, "wrong": 0}
    expected = dict(zip(prompts, await expected))
    load = asyncio.create_task(keystroke_load(first, stop, results, expected))
    await asyncio.sleep(1.0)
    # Replica: start the new one, then drain the old one (it leaves the registry first, then finishes streams).
    await cluster.add_replica_process("r-new")
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
