"""Request preparation (validation + tokenization) on a bounded pool, shared fairly between tenants.

Tokenizing a large prompt takes CPU for a while. Run in the default thread
pool, one tenant's burst of huge prompts took as many threads as it sent and
starved everyone: another tenant's time to first token rose from 13 ms to
seconds (issue 13). Here at most `workers` preparations run at once, and the
waiting ones are served round-robin across tenants (the request's
`cache_namespace`), so a tenant waits behind at most one preparation of each
other tenant, however many that tenant queued; each tenant may queue at most
`max_queued_per_tenant` (RESOURCE_EXHAUSTED beyond).
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor

from flint.errors import ResourceExhausted


class FairPreparePool:
    def __init__(self, workers: int = 1, max_queued_per_tenant: int = 64):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="flint-prepare")
        self._free = workers
        self._max_queued = max_queued_per_tenant
        self._queues: dict[str, collections.deque] = {}
        self._turns: collections.deque[str] = collections.deque()  # tenants with waiting work, in turn order

    async def run(self, tenant: str, fn, *args):
        """`fn(*args)` on the pool when it is `tenant`'s turn; returns (or raises) what it does."""
        queue = self._queues.get(tenant)
        if queue is not None and len(queue) >= self._max_queued:
            raise ResourceExhausted(f"{len(queue)} requests of this tenant are waiting to be prepared on this "
                                    "replica (its limit); retry after 500 ms", retry_after_ms=500)
        future = asyncio.get_running_loop().create_future()
        if queue is None:
            queue = self._queues[tenant] = collections.deque()
            self._turns.append(tenant)
        queue.append((fn, args, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._free and self._turns:
            tenant = self._turns.popleft()
            queue = self._queues[tenant]
            fn, args, future = queue.popleft()
            if queue:
                self._turns.append(tenant)   # its next one waits for every other tenant's turn
            else:
                del self._queues[tenant]
            if future.done():                # its caller went away while it waited
                continue
            self._free -= 1
            loop = future.get_loop()
            done = self._executor.submit(fn, *args)
            done.add_done_callback(lambda d, f=future: loop.call_soon_threadsafe(self._finished, d, f))

    def _finished(self, done, future: asyncio.Future) -> None:
        self._free += 1
        if not future.done():
            exc = done.exception()
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(done.result())
        self._dispatch()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
