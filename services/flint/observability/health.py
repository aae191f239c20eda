"""Readiness of a front-end worker: can it serve a request right now?

Not while Redis does not answer (sessions, routing, auth and the journal live there) or while no engine
replica is routable (every one gone from the registry, unhealthy or draining). `Readiness` checks both
every `interval_s` and calls `on_change(serving, reason)` when the answer changes; the worker maps it to
gRPC health (SERVING / NOT_SERVING) and to the HTTP door's GET /health (200 / 503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Awaitable, Callable

log = logging.getLogger(__name__)


class Readiness:
    def __init__(self, redis, pool, on_change: Callable[[bool, str], Awaitable[None]], *,
                 interval_s: float = 1.0, timeout_s: float = 1.0):
        self._redis, self._pool, self._on_change = redis, pool, on_change
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.serving: bool | None = None
        self.reason = "not checked yet"
        self._task: asyncio.Task | None = None

    async def check(self) -> tuple[bool, str]:
        """(serving, reason) as of now."""
        try:
            await asyncio.wait_for(self._redis.ping(), self.timeout_s)
        except Exception as exc:  # any failure to answer means the worker cannot serve
            return False, f"Redis does not answer ({type(exc).__name__})"
        try:
            replicas = await asyncio.wait_for(self._pool.replicas(fresh=True), self.timeout_s)
        except Exception as exc:
            return False, f"cannot read the replica registry ({type(exc).__name__})"
        if not any(r.routable for r in replicas):
            return False, f"no engine replica is routable ({len(replicas)} registered)"
        return True, f"{sum(r.routable for r in replicas)} routable replica(s)"

    async def update(self) -> bool:
        serving, reason = await self.check()
        self.reason = reason
        if serving != self.serving:
            self.serving = serving
            log.log(logging.INFO if serving else logging.WARNING, "front-end %s: %s",
                    "SERVING" if serving else "NOT_SERVING", reason)
            await self._on_change(serving, reason)
        return serving

    async def start(self) -> None:
        await self.update()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            with contextlib.suppress(Exception):
                await self.update()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
