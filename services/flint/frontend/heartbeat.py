"""A front-end worker's heartbeat in Redis: a resume moves a request only when its owner has stopped beating.

Key (prefix `flint` by default): {p}:worker:{worker_id}:alive, with a short TTL (`journal.worker_ttl_s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger(__name__)


class WorkerLiveness:
    """A front-end worker's heartbeat key: a resume moves a request only when its owner has stopped beating."""

    def __init__(self, redis, key_prefix: str, worker_id: str, ttl_s: float):
        self._redis = redis
        self._prefix = key_prefix
        self._worker_id = worker_id
        self._ttl_s = ttl_s
        self._task: asyncio.Task | None = None

    def key(self, worker_id: str) -> str:
        return f"{self._prefix}:worker:{worker_id}:alive"

    async def start(self) -> None:
        await self._beat()
        self._task = asyncio.create_task(self._loop(), name=f"liveness {self._worker_id}")

    async def _beat(self) -> None:
        await self._redis.set(self.key(self._worker_id), b"1", px=int(self._ttl_s * 1000))

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._ttl_s / 3)
            try:
                await self._beat()
            except Exception as exc:  # noqa: BLE001 - keep beating through Redis blips
                log.warning("worker %s liveness heartbeat failed: %s", self._worker_id, exc)

    async def alive(self, worker_id: str) -> bool:
        return bool(await self._redis.exists(self.key(worker_id)))

    async def stop(self) -> None:
        """Stop beating and drop the key now, so resumes of this worker's requests move at once."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            await self._redis.delete(self.key(self._worker_id))
