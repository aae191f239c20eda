"""Sessions and the request registry in Redis (msgpack payloads, namespaced keys with TTLs).

Front-end workers keep nothing that matters only in memory: whichever
worker receives an Interrupt finds the owner of a request here, and a
session's replica affinity survives the worker that opened it.

Keys (prefix `flint` by default):
  {p}:session:{session_id}       session record
  {p}:req:{request_id}           request record: owner worker, state, last seq
  {p}:req:{request_id}:interrupt flag set by an Interrupt, polled by the owner
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from flint.errors import InvalidArgument
from flint.records import pack_record, unpack_record
from flint.respconn import RespConnection, Script

RUNNING = "running"
TERMINAL_STATES = ("finished", "interrupted", "failed")

# Claim a request id unless a *running* request holds it, and clear a stale interrupt
# flag: atomic, so two workers cannot both claim one client-chosen id. Then, in the
# same round trip, delete ARGV[3] more keys and set the rest (value, PX ttl pairs in
# ARGV): the start of the request's journal and its session's new affinity.
_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, rec = pcall(cmsgpack.unpack, current)
  if ok and type(rec) == 'table' and rec['state'] == 'running' then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
local deletes = tonumber(ARGV[3])
for i = 3, 2 + deletes do
  redis.call('DEL', KEYS[i])
end
for i = 3 + deletes, #KEYS do
  local j = 4 + 2 * (i - 3 - deletes)
  redis.call('SET', KEYS[i], ARGV[j], 'PX', ARGV[j + 1])
end
return 1
"""
_CLAIM_SCRIPT = Script(_CLAIM)




@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    owner: str                  # worker id that relays the stream
    state: str = RUNNING        # running | finished | interrupted | failed
    last_seq: int = 0           # seq of the last delta relayed (written at the end of the request)
    session_id: str = ""
    replica_id: str = ""
    created_unix_s: float = 0.0
    tenant: str = ""            # authenticated tenant; other tenants get NOT_FOUND for this id

    @property
    def running(self) -> bool:
        return self.state == RUNNING


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    model: str = ""
    client: str = ""
    replica_id: str = ""        # replica that holds the session's KV prefix (routing affinity)
    created_unix_s: float = 0.0
    tenant: str = ""            # authenticated tenant; other tenants cannot reopen it


class Store:
    """Sessions and request records through a `redis.asyncio` client; a request's claim, on every request's way
    to its first token, through `claims` (flint.respconn: a third of redis-py's CPU per claim), which a worker
    keeps for claims alone so no other command's reply comes before theirs."""

    def __init__(self, redis, key_prefix: str, *, session_ttl_s: float, request_ttl_s: float,
                 claims: RespConnection | None = None):
        self.redis = redis
        self.prefix = key_prefix
        self._session_ttl_ms = int(session_ttl_s * 1000)
        self._request_ttl_ms = int(request_ttl_s * 1000)
        self._claims = claims

    @property
    def request_ttl_ms(self) -> int:
        return self._request_ttl_ms

    # ------------------------------------------------------------ keys
    def session_key(self, session_id: str) -> str:
        return f"{self.prefix}:session:{session_id}"

    def request_key(self, request_id: str) -> str:
        return f"{self.prefix}:req:{request_id}"

    def flag_key(self, request_id: str) -> str:
        return f"{self.prefix}:req:{request_id}:interrupt"

    # ------------------------------------------------------------ sessions
    async def get_session(self, session_id: str) -> SessionRecord | None:
        key = self.session_key(session_id)
        return unpack_record(SessionRecord, await self.redis.get(key), where=key)

    async def put_session(self, session: SessionRecord) -> None:
        await self.redis.set(self.session_key(session.session_id), pack_record(session),
                             px=self._session_ttl_ms)

    # ------------------------------------------------------------ requests
    def session_write(self, session: SessionRecord) -> tuple[str, bytes, int]:
        """(key, value, ttl_ms) of a session record, for `claim_request(..., writes=)`."""
        return self.session_key(session.session_id), pack_record(session), self._session_ttl_ms

    async def claim_request(self, record: RequestRecord, *, deletes=(), writes=()) -> None:
        """Register a new request; a client-chosen id still running is refused. Only if the claim succeeds,
        also delete the keys `deletes` and set `writes` ((key, value, ttl_ms) each): one round trip."""
        record = replace(record, created_unix_s=record.created_unix_s or time.time())
        payload = pack_record(record)
        keys = [self.request_key(record.request_id), self.flag_key(record.request_id), *deletes,
                *(key for key, _, _ in writes)]
        args = [payload, self._request_ttl_ms, len(deletes)]
        for _, value, ttl_ms in writes:
            args += [value, ttl_ms]
        if self._claims is None:
            raise RuntimeError("this Store was made without a claims connection; it cannot claim requests")
        if await self._claims.run_script(_CLAIM_SCRIPT, keys, args):
            return
        raise InvalidArgument(f"request id {record.request_id!r} is already in use by a running request; "
                              "choose another id or leave it empty for a server-generated one")

    async def get_request(self, request_id: str) -> RequestRecord | None:
        key = self.request_key(request_id)
        return unpack_record(RequestRecord, await self.redis.get(key), where=key)

    def finish_write(self, record: RequestRecord, state: str, last_seq: int) -> tuple[RequestRecord, tuple]:
        """The ended record and its (key, value, ttl_ms) write, for a caller that batches it (`finish_request`)."""
        done = replace(record, state=state, last_seq=last_seq)
        return done, (self.request_key(record.request_id), pack_record(done), self._request_ttl_ms)

    async def finish_request(self, record: RequestRecord, state: str, last_seq: int, *,
                             deletes: list[str] = (), publishes: list[tuple[str, bytes]] = ()) -> RequestRecord:
        """Record the end of a request; also delete the keys `deletes`, then publish `publishes` ((channel,
        message) each), in the same round trip, after the record."""
        done, (key, value, ttl_ms) = self.finish_write(record, state, last_seq)
        if not deletes and not publishes:
            await self.redis.set(key, value, px=ttl_ms)
            return done
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, value, px=ttl_ms)
            if deletes:
                pipe.delete(*deletes)
            for channel, message in publishes:
                pipe.publish(channel, message)
            await pipe.execute()
        return done

    async def refresh_requests(self, request_ids: list[str]) -> None:
        """Restart the TTL of running requests' records (one pipeline): a long request's record never
        expires under it, so its id cannot be taken over or interrupted as if it were unknown."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.pexpire(self.request_key(request_id), self._request_ttl_ms)
            await pipe.execute()

    async def set_interrupt_flag(self, request_id: str) -> None:
        await self.redis.set(self.flag_key(request_id), b"1", px=self._request_ttl_ms)

    async def interrupt_flags(self, request_ids: list[str]) -> list[str]:
        """Which of these requests have their interrupt flag set (one MGET)."""
        if not request_ids:
            return []
        values = await self.redis.mget([self.flag_key(r) for r in request_ids])
        return [r for r, v in zip(request_ids, values) if v is not None]

    async def count_sessions(self) -> int:
        count = 0
        async for _ in self.redis.scan_iter(match=self.session_key("*"), count=1000):
            count += 1
        return count

    async def running_requests(self) -> list[RequestRecord]:
        records = []
        async for key in self.redis.scan_iter(match=self.request_key("*"), count=1000):
            if key.endswith(b":interrupt"):
                continue
            record = await self.get_request(key.decode().removeprefix(self.request_key("")))
            if record is not None and record.running:
                records.append(record)
        return records
