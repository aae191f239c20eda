"""The generator watching itself: CPU use and event-loop lag.

A generator that is short of CPU sends late and reads deltas late, which
looks like server latency. Each generator therefore reports its own CPU
seconds (user + system) over its wall time, and the lag of a 10 ms ticker
on its event loop, so a report can say when the client was the bottleneck.
"""

from __future__ import annotations

import asyncio
import resource
import time

from flint.load.histogram import LogHistogram

TICK_S = 0.010


class SelfMonitor:
    def __init__(self):
        self.loop_lag = LogHistogram()
        self._task: asyncio.Task | None = None

    @staticmethod
    def _cpu_s() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def start(self) -> None:
        self._cpu0, self._wall0 = self._cpu_s(), time.perf_counter()
        self._task = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        while True:
            expected = time.perf_counter() + TICK_S
            await asyncio.sleep(TICK_S)
            self.loop_lag.record(max(0.0, (time.perf_counter() - expected) * 1000.0))

    async def stop(self) -> dict:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        cpu_s, wall_s = self._cpu_s() - self._cpu0, time.perf_counter() - self._wall0
        return {"cpu_s": round(cpu_s, 3), "wall_s": round(wall_s, 3),
                "cpu_util": round(cpu_s / wall_s, 4) if wall_s > 0 else None,
                "loop_lag_ms": self.loop_lag.summary(), "loop_lag_hist": self.loop_lag.to_dict()}
