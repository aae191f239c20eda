"""A lean, pipelined asyncio connection to Redis (RESP2) for a front-end worker's two hot writers.

Why: a request's claim through redis-py cost the worker 93-140 us of CPU (126-202 us wall) next to the
engine's prefill on two cores, most of it redis-py's connection and command layers; the same EVALSHA written
to a plain asyncio connection costs about a third. And a redis-py pipeline waits for its reply before the
next one goes, so the journal's batch that records a request's end (and an interrupter's acknowledgement)
waited behind a delta batch in flight. Here:

- every command or batch is written to the socket at once, and replies are matched to their senders first
  in, first out: a second batch never waits for the first's reply, and since Redis runs one connection's
  commands in the order it reads them, the order of sending is the order of effects;
- replies are parsed from one buffer (simple strings and bulk strings as bytes, integers, arrays, nil as None,
  error replies as redis-py exception instances);
- it takes the URLs flint passes to redis-py (`redis://[user:pass@]host:port/db`, `unix://`, `rediss://` with
  TLS from asyncio's ssl, all read by redis-py's own `parse_url`, so both clients agree on them), and sends
  AUTH and SELECT first on every connection;
- errors are redis-py's exception classes (`redis.exceptions`), so callers and `flint.grpc_status` treat them
  as before: an error reply is a ResponseError (NoScriptError, AuthenticationError, ...), a lost connection
  fails every command in flight with ConnectionError (its effect in Redis is unknown, so nothing is sent
  again), and the next command opens a new connection.

Everything else in flint keeps redis-py.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from redis import exceptions as rex

Command = Sequence[bytes | str | int | float]


@dataclass(frozen=True)
class RespAddress:
    """Where and how to connect: a TCP host and port or a unix socket path, the database, credentials, TLS."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""                    # a unix socket instead of host and port
    db: int = 0
    username: str = ""
    password: str = ""
    tls: ssl.SSLContext | None = None

    @classmethod
    def from_url(cls, url: str) -> "RespAddress":
        from redis.connection import SSLConnection, parse_url

        try:
            opts = parse_url(url)
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL: {exc}") from None
        tls = _tls_context(opts) if opts.get("connection_class") is SSLConnection else None
        return cls(host=opts.get("host") or "127.0.0.1", port=int(opts.get("port") or 6379),
                   path=opts.get("path") or "", db=int(opts.get("db") or 0), username=opts.get("username") or "",
                   password=opts.get("password") or "", tls=tls)

    def __str__(self) -> str:   # never the password
        return f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"


def _tls_context(opts: dict) -> ssl.SSLContext:
    """The TLS settings a `rediss://` URL may carry (redis-py's names): ssl_ca_certs, ssl_certfile,
    ssl_keyfile, ssl_cert_reqs (none | optional | required, the default) and ssl_check_hostname."""
    context = ssl.create_default_context(cafile=opts.get("ssl_ca_certs"))
    if opts.get("ssl_certfile"):
        context.load_cert_chain(opts["ssl_certfile"], opts.get("ssl_keyfile"))
    reqs = str(opts.get("ssl_cert_reqs", "required")).lower()
    check = opts.get("ssl_check_hostname", True)
    context.check_hostname = reqs == "required" and check not in (False, "false", "False", "0")
    context.verify_mode = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL}.get(reqs, ssl.CERT_REQUIRED)
    return context


class Script:
    """A Lua script run by its SHA1 (EVALSHA), sent whole (EVAL) only when the server does not know it."""

    def __init__(self, source: str):
        self.source = source.encode()
        self.sha = hashlib.sha1(self.source).hexdigest().encode()


class RespConnection:
    """One Redis connection that pipelines: `send` writes at once and returns a future of the replies."""

    def __init__(self, address: RespAddress, *, connect_timeout_s: float = 5.0):
        if connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s must be > 0, got {connect_timeout_s!r}")
        self.address = address
        self.connect_timeout_s = connect_timeout_s
        self._link: _Link | None = None
        self._closed = False

    @classmethod
    def from_url(cls, url: str, **kwargs) -> "RespConnection":
        return cls(RespAddress.from_url(url), **kwargs)

    def send(self, commands: Sequence[Command]) -> asyncio.Future:
        """Write `commands` now (or as soon as the connection is open, in order) and return a future of their
        replies, one per command, in order; an error reply is a `redis.exceptions` instance in the list. The
        future fails with ConnectionError if the connection is lost first. Cancelling it drops the replies
        (the commands still run)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self._closed:
            future.set_exception(rex.ConnectionError(f"the connection to Redis at {self.address} is closed"))
            return future
        if not commands:
            future.set_result([])
            return future
        data = encode(commands)
        link = self._link
        if link is None or link.lost is not None:
            link = self._link = self._open(loop)
        link.write(data, future, len(commands))
        return future

    async def call(self, *command):
        """Run one command; its reply, or its error reply raised."""
        reply = (await self.send((command,)))[0]
        if isinstance(reply, rex.RedisError):
            raise reply
        return reply

    async def run_script(self, script: Script, keys: Sequence, args: Sequence):
        """EVALSHA; the script whole (EVAL, which also loads it) if the server answers NOSCRIPT."""
        reply = (await self.send(((b"EVALSHA", script.sha, len(keys), *keys, *args),)))[0]
        if isinstance(reply, rex.NoScriptError):
            reply = (await self.send(((b"EVAL", script.source, len(keys), *keys, *args),)))[0]
        if isinstance(reply, rex.RedisError):
            raise reply
        return reply

    async def close(self) -> None:
        """Close the connection; commands in flight fail with ConnectionError, and later ones at once."""
        self._closed = True
        link, self._link = self._link, None
        if link is not None:
            link.fail(rex.ConnectionError(f"the connection to Redis at {self.address} was closed"))

    def _open(self, loop) -> "_Link":
        """A new link, its handshake (AUTH, SELECT) first in line; commands queue behind it while it connects."""
        address = self.address
        handshake = []
        if address.password:
            handshake.append((b"AUTH", address.username, address.password) if address.username
                             else (b"AUTH", address.password))
        if address.db:
            handshake.append((b"SELECT", address.db))
        link = _Link(address, encode(handshake) if handshake else b"", len(handshake))
        link.opening = loop.create_task(self._connect(loop, link), name=f"redis connect {address}")
        return link

    async def _connect(self, loop, link: "_Link") -> None:
        address = self.address
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if address.path:
                    await loop.create_unix_connection(lambda: link, address.path)
                else:
                    await loop.create_connection(lambda: link, address.host, address.port, ssl=address.tls)
        except asyncio.CancelledError:
            link.fail(rex.ConnectionError(f"connecting to Redis at {address} was cancelled"))
            raise
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, timed out, TLS: every waiter learns why
            link.fail(rex.ConnectionError(f"cannot connect to Redis at {address}: {str(exc) or type(exc).__name__}"))


class _Link(asyncio.Protocol):
    """One socket's life: what is written before it opens, and the replies awaited, oldest first."""

    def __init__(self, address: RespAddress, handshake: bytes, handshake_count: int):
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.opening: asyncio.Task | None = None
        self.unsent: list[bytes] = [handshake] if handshake else []
        # [future, replies still to come, replies so far]; the handshake's future is None.
        self.waiting: deque[list] = deque([[None, handshake_count, []]] if handshake_count else ())
        self.buffer = bytearray()
        self.lost: Exception | None = None

    def write(self, data: bytes, future: asyncio.Future, count: int) -> None:
        self.waiting.append([future, count, []])
        if self.transport is None:
            self.unsent.append(data)
        else:
            self.transport.write(data)

    def connection_made(self, transport) -> None:
        if self.lost is not None:   # closed while connecting
            transport.close()
            return
        self.transport = transport
        if self.unsent:
            transport.write(b"".join(self.unsent))
        self.unsent = []

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos, size, waiting = 0, len(buffer), self.waiting
        while pos < size:
            try:
                reply, end = parse(buffer, pos)
            except (ValueError, IndexError) as exc:
                self.fail(rex.InvalidResponse(f"unreadable reply from Redis at {self.address}: {exc}"))
                return
            if end < 0:
                break
            pos = end
            if not waiting:
                self.fail(rex.InvalidResponse(f"a reply nobody asked for from Redis at {self.address}"))
                return
            head = waiting[0]
            head[2].append(reply)
            head[1] -= 1
            if head[1] == 0:
                waiting.popleft()
                future = head[0]
                if future is None:
                    self._handshake_done(head[2])
                elif not future.done():
                    future.set_result(head[2])
                if self.lost is not None:
                    return
        del buffer[:pos]

    def _handshake_done(self, replies: list) -> None:
        for reply in replies:
            if isinstance(reply, rex.RedisError):
                error = reply if isinstance(reply, rex.AuthenticationError) else rex.ConnectionError(
                    f"Redis at {self.address} refused the connection's setup: {reply}")
                self.fail(error)
                return

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(rex.ConnectionError(f"the connection to Redis at {self.address} was lost"
                                      + (f": {exc}" if exc else "")))

    def fail(self, error: Exception) -> None:
        """End this link: every command still waiting fails with `error` (each gets its own copy)."""
        if self.lost is None:
            self.lost = error
        waiting, self.waiting = self.waiting, deque()
        for future, _, _ in waiting:
            if future is not None and not future.done():
                future.set_exception(type(error)(*error.args))
        if self.transport is not None:
            self.transport.close()
        elif self.opening is not None and not self.opening.done():
            self.opening.cancel()


def encode(commands: Sequence[Command]) -> bytes:
    """Commands as one RESP2 byte string (each an array of bulk strings)."""
    parts = []
    append = parts.append
    for command in commands:
        append(b"*%d\r\n" % len(command))
        for arg in command:
            if isinstance(arg, bytes):
                pass
            elif isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, int) and not isinstance(arg, bool):
                arg = b"%d" % arg
            elif isinstance(arg, float):
                arg = repr(arg).encode()
            elif isinstance(arg, (bytearray, memoryview)):
                arg = bytes(arg)
            else:
                raise rex.DataError(f"a Redis argument must be bytes, str, int or float, not {type(arg).__name__}")
            append(b"$%d\r\n" % len(arg))
            append(arg)
            append(b"\r\n")
    return b"".join(parts)


def parse(buffer: bytearray, pos: int):
    """The reply that starts at `pos`: (value, the position after it), or (None, -1) if it is not all there."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        return None, -1
    kind = buffer[pos]
    if kind == 58:                                   # ':' integer
        return int(buffer[pos + 1:end]), end + 2
    if kind == 36:                                   # '$' bulk string
        size = int(buffer[pos + 1:end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if stop + 2 > len(buffer):
            return None, -1
        return bytes(buffer[end + 2:stop]), stop + 2
    if kind == 43:                                   # '+' simple string
        return bytes(buffer[pos + 1:end]), end + 2
    if kind == 45:                                   # '-' error
        return error_of(buffer[pos + 1:end].decode(errors="replace")), end + 2
    if kind == 42:                                   # '*' array
        count = int(buffer[pos + 1:end])
        pos = end + 2
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse(buffer, pos)
            if pos < 0:
                return None, -1
            items.append(item)
        return items, pos
    raise ValueError(f"unknown reply type {chr(kind)!r}")


_ERRORS = {"NOSCRIPT": rex.NoScriptError, "NOAUTH": rex.AuthenticationError, "WRONGPASS": rex.AuthenticationError,
           "READONLY": rex.ReadOnlyError, "NOPERM": rex.NoPermissionError, "OOM": rex.OutOfMemoryError,
           "LOADING": rex.BusyLoadingError, "EXECABORT": rex.ExecAbortError}


def error_of(message: str) -> rex.RedisError:
    """An error reply as the redis-py exception class for its code (ResponseError for the rest)."""
    code = message.split(" ", 1)[0]
    if message.startswith("ERR invalid password") or message.startswith("ERR AUTH"):
        return rex.AuthenticationError(message)
    return _ERRORS.get(code, rex.ResponseError)(message)
