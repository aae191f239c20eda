"""A request's claim, redis-py against flint.respconn, in one process on uvloop against embedded Valkey.

Each call is what `Store.claim_request` sends for a new request with a journal and a session whose affinity
moves: the `_CLAIM` script with the record, the flag, the journal's stream and gap to delete, its meta and the
session to set. "redis-py" runs it as main did (`redis.register_script`, EVALSHA through the client's pool);
"resp" through `Store.claim_request` on a `RespConnection`. Blocks of N calls, alternated; per call the
thread's CPU time (`time.thread_time_ns`: the event loop, the client's encoding, parsing and socket calls) and
wall time around the await. Usage: PYTHONPATH=<tree>/services python claim_cpu.py [blocks] [calls per block]
"""

import asyncio
import secrets
import statistics
import sys
import time

import msgpack
import redis.asyncio as aioredis
import uvloop

from flint.frontend.store import _CLAIM, RequestRecord, SessionRecord, Store
from flint.respconn import RespConnection
from flint.valkey import EmbeddedValkey


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def block(kind, store, script, calls, prefix):
    cpu, wall = [], []
    meta = msgpack.packb({"request": b"x" * 200, "tenant": "", "model": "m", "created_unix_s": time.time()})
    session = SessionRecord(session_id="s-1", replica_id="r-1")
    for i in range(calls):
        request_id = f"{prefix}-{i}"
        record = RequestRecord(request_id=request_id, owner="w", replica_id="r-1", created_unix_s=time.time())
        deletes = [f"bench:journal:{request_id}", f"bench:journal:{request_id}:gap"]
        writes = [(f"bench:journal:{request_id}:meta", meta, 600_000), store.session_write(session)]
        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
        if kind == "resp":
            await store.claim_request(record, deletes=deletes, writes=writes)
        else:   # main's Store.claim_request, its redis-py call
            from dataclasses import replace

            from flint.records import pack_record
            record = replace(record, created_unix_s=record.created_unix_s or time.time())
            keys = [store.request_key(request_id), store.flag_key(request_id), *deletes, *(k for k, _, _ in writes)]
            args = [pack_record(record), store.request_ttl_ms, len(deletes)]
            for _, value, ttl_ms in writes:
                args += [value, ttl_ms]
            assert await script(keys=keys, args=args)
        cpu.append((time.thread_time_ns() - c0) / 1000)
        wall.append((time.perf_counter_ns() - w0) / 1000)
    return cpu, wall


async def main(url, blocks, calls):
    redis = aioredis.Redis.from_url(url)
    claims = RespConnection.from_url(url)
    store = Store(redis, "bench", session_ttl_s=600, request_ttl_s=600, claims=claims)
    script = redis.register_script(_CLAIM)
    for kind in ("redis-py", "resp"):   # warm both (connections, script cache)
        await block(kind, store, script, 200, f"warm-{kind}")
    rows = []
    for b in range(blocks):
        for kind in (("redis-py", "resp") if b % 2 == 0 else ("resp", "redis-py")):
            cpu, wall = await block(kind, store, script, calls, f"b{b}-{kind}-{secrets.token_hex(2)}")
            rows.append((b, kind, statistics.median(cpu), pct(cpu, 0.9), statistics.median(wall), pct(wall, 0.9)))
            print(f"block {b:2d} {kind:9s} cpu us p50 {rows[-1][2]:6.1f} p90 {rows[-1][3]:6.1f}   "
                  f"wall us p50 {rows[-1][4]:6.1f} p90 {rows[-1][5]:6.1f}", flush=True)
    for kind in ("redis-py", "resp"):
        mine = [r for r in rows if r[1] == kind]
        print(f"{kind:9s} medians over blocks: cpu p50 {statistics.median(r[2] for r in mine):.1f} us "
              f"(blocks {min(r[2] for r in mine):.1f}-{max(r[2] for r in mine):.1f}), wall p50 "
              f"{statistics.median(r[4] for r in mine):.1f} us ({min(r[4] for r in mine):.1f}-"
              f"{max(r[4] for r in mine):.1f})")
    await claims.close()
    await redis.aclose()


if __name__ == "__main__":
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    with EmbeddedValkey() as valkey:
        uvloop.run(main(valkey.url, blocks, calls))
