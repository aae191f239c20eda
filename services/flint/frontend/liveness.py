"""Liveness of connections: keepalive and idle/age limits on the public server, and a front-end's watch on
the engine replica of each request (keepalive, a deadline and a stall probe on the internal `Generate`).

Public server (`server_options`): the server pings a connection that has been quiet for
`keepalive_time_s` and closes it when the ping is not answered within `keepalive_timeout_s` (a client
that vanished without a FIN); a connection with no call open for `max_connection_idle_s` is closed; one
older than `max_connection_age_s` is asked to reconnect (GOAWAY) and its calls get
`max_connection_age_grace_s` to finish. Clients may ping, with or without a call open
(`permit_keepalive_without_calls`), every `min_client_ping_interval_s` at most.

Front-end -> replica (`engine_channel_options`, `EngineWatch`): the channel pings the replica every
`engine_keepalive_time_s` while calls are open and drops the connection when a ping goes unanswered for
`engine_keepalive_timeout_s`, so a frozen (SIGSTOP) or partitioned replica ends its streams UNAVAILABLE
in about the sum of the two; the replica's server accepts pings that often (`engine_server_options`).
On the engine link (flint.link, the default hop) the same two settings drive the link's own pings: a connection
silent for `engine_keepalive_time_s` sends a ping, and nothing heard `engine_keepalive_timeout_s` after it fails
every call on it UNAVAILABLE.
Besides, when no event arrived for `engine_stall_s` the owner asks the replica for its load
(`Load`, deadline `engine_probe_timeout_s`): no answer ends the request UNAVAILABLE too (a replica
whose event loop is wedged still answers pings from gRPC's own threads). Each `Generate` call has a
deadline of `engine_call_timeout_s` (or the request's `max_time_ms` plus `engine_stall_s`, when less).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, fields
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LivenessConfig:
    """Front-end config table `liveness` (seconds)."""

    # Public server
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    max_connection_idle_s: float = 900.0
    max_connection_age_s: float = 86400.0
    max_connection_age_grace_s: float = 300.0
    permit_keepalive_without_calls: bool = True
    min_client_ping_interval_s: float = 10.0
    # Front-end -> engine replica
    engine_keepalive_time_s: float = 1.0
    engine_keepalive_timeout_s: float = 1.5
    engine_stall_s: float = 1.0
    engine_probe_timeout_s: float = 1.0
    engine_call_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, bool):
                if not isinstance(value, bool):
                    raise ValueError(f"liveness.{f.name} must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"liveness.{f.name} must be a number of seconds > 0, got {value!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "LivenessConfig":
        values = dict(values or {})
        unknown = set(values) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown liveness key(s) {sorted(unknown)}; known: {[f.name for f in fields(cls)]}")
        return cls(**values)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def server_options(cfg: LivenessConfig) -> list[tuple[str, int]]:
    """grpc.aio server options of the public server."""
    return [
        ("grpc.keepalive_time_ms", _ms(cfg.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(cfg.keepalive_timeout_s)),
        ("grpc.http2.ping_timeout_ms", _ms(cfg.keepalive_timeout_s)),   # what gRPC 1.85 times pings out by
        ("grpc.max_connection_idle_ms", _ms(cfg.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", _ms(cfg.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", _ms(cfg.max_connection_age_grace_s)),
        ("grpc.keepalive_permit_without_calls", int(cfg.permit_keepalive_without_calls)),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(cfg.min_client_ping_interval_s)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


def engine_channel_options(cfg: LivenessConfig) -> list[tuple[str, int]]:
    """Channel options of a front-end's channel to a replica: pings while calls are open."""
    return [
        ("grpc.keepalive_time_ms", _ms(cfg.engine_keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(cfg.engine_keepalive_timeout_s)),
        # gRPC 1.85's transport times a ping out by this one, not by keepalive_timeout_ms (measured: without it a
        # SIGSTOPped peer went unnoticed for the 15 s tried; with it the call ended UNAVAILABLE after 2.5 s)
        ("grpc.http2.ping_timeout_ms", _ms(cfg.engine_keepalive_timeout_s)),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),   # keep pinging through a long prefill that sends nothing
    ]


def engine_server_options() -> list[tuple[str, int]]:
    """A replica's server options: accept a front-end's pings as often as `engine_keepalive_time_s` allows (the
    default policy answers a ping every second with GOAWAY "too_many_pings", which would end every stream)."""
    return [
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 200),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def engine_call_timeout_s(cfg: LivenessConfig, max_time_ms: int) -> float:
    """Deadline of one `Generate` call: the configured ceiling, or the request's own time budget plus a stall."""
    if max_time_ms:
        return min(cfg.engine_call_timeout_s, max_time_ms / 1000.0 + cfg.engine_stall_s + cfg.engine_probe_timeout_s)
    return cfg.engine_call_timeout_s


class EngineWatch:
    """Watches one `Generate` call: `heard()` on every event; after `stall_s` of silence `probe()` must answer
    within `probe_timeout_s`, else the call is cancelled and `failure` says why.

    A timer, not a task: a call that keeps talking costs no task and no wake-up of its own; a probe task
    runs only once the call has been silent for `stall_s`."""

    def __init__(self, cfg: LivenessConfig, probe: Callable[[float], Awaitable[None]], where: str):
        self._stall_s = cfg.engine_stall_s
        self._probe_timeout_s = cfg.engine_probe_timeout_s
        self._probe = probe
        self._where = where              # for the log only: clients never see replica addresses
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._call = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None
        self.failure: str | None = None
        self.probes = 0

    def heard(self) -> None:
        self._last = self._loop.time()

    def start(self, call) -> None:
        self._call = call
        self._arm()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _arm(self) -> None:
        self._timer = self._loop.call_at(self._last + self._stall_s, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._loop.time() < self._last + self._stall_s:   # heard from meanwhile: wait from then
            self._arm()
        else:
            self._task = asyncio.ensure_future(self._check(self._loop.time() - self._last))

    async def _check(self, silent_s: float) -> None:
        self.probes += 1
        try:
            await asyncio.wait_for(self._probe(self._probe_timeout_s), self._probe_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure to answer means it cannot serve this stream
            self.failure = (f"the engine replica serving this request sent nothing for {silent_s:.1f} s and "
                            f"did not answer a probe within {self._probe_timeout_s:g} s")
            log.warning("engine replica %s: %s (%s); ending its stream", self._where, self.failure,
                        type(exc).__name__)
            self._call.cancel()
            return
        self._last = max(self._last, self._loop.time())   # it answered: busy (a long prefill), not frozen
        self._task = None
        self._arm()
