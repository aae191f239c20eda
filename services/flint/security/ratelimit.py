"""Per-tenant request rate limits, shared by every front-end worker through Redis.

Fixed one-second windows: one INCR (+PEXPIRE) per request on the key
`{prefix}:rate:{tenant}:{unix second}`. Simple and exact enough for a
limit meant to stop a runaway client, and it costs one round trip.
"""

from __future__ import annotations

import math
import time

from flint.errors import ResourceExhausted


class RateLimiter:
    def __init__(self, redis, key_prefix: str, *, per_s: float, burst: int = 0):
        self._redis = redis
        self._prefix = key_prefix
        self.limit = max(burst, math.ceil(per_s))

    async def check(self, tenant: str) -> None:
        """Count one request of `tenant`; RESOURCE_EXHAUSTED (retry at the next window) when over."""
        now = time.time()
        window = int(now)
        key = f"{self._prefix}:rate:{tenant or '-'}:{window}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, 2000)
            count, _ = await pipe.execute()
        if count > self.limit:
            retry_after_ms = max(1, int((window + 1 - now) * 1000))
            raise ResourceExhausted(f"tenant {tenant or 'anonymous'} is over its rate limit of {self.limit} "
                                    f"requests per second; retry after {retry_after_ms} ms",
                                    retry_after_ms=retry_after_ms)
