"""The adapter interface and the per-request state every adapter fills in."""

from __future__ import annotations

import abc
import asyncio
from typing import Callable

from flint.load.record import RequestRecord
from flint.load.workload import RequestSpec

Clock = Callable[[], float]   # ms since the run's common start


class RequestState:
    """One in-flight request: its spec, its record, and an event set when its stream has ended."""

    def __init__(self, spec: RequestSpec, record: RequestRecord, clock: Clock):
        self.spec, self.record, self.clock = spec, record, clock
        self.server_id = record.id   # the id the server knows it by (a new one if it had to be sent again)
        self.done = asyncio.Event()
        self.on_tokens: Callable[["RequestState"], None] | None = None   # runner's self-interrupt check
        self.on_finish: Callable[["RequestState"], None] | None = None   # runner's live progress counts
        self.tokens = 0

    def accepted(self, prompt_tokens: int | None = None) -> None:
        self.record.t_accepted_ms = self.clock()
        if prompt_tokens is not None:
            self.record.prompt_tokens = prompt_tokens

    def delta(self, seq: int, token_count: int) -> None:
        if self.done.is_set() or self.record.interrupt_mode == "close":   # a closed stream delivers nothing more
            return
        self.record.deltas.append([round(self.clock(), 4), seq, token_count])
        self.tokens += token_count
        if self.on_tokens is not None:
            self.on_tokens(self)

    def mark_interrupt(self, mode: str) -> None:
        if self.record.t_interrupt_ms is None and not self.done.is_set():
            self.record.t_interrupt_ms = self.clock()
            self.record.interrupt_mode = mode

    def ack(self, last_seq: int) -> None:
        self.record.t_interrupt_ack_ms = self.clock()
        self.record.ack_last_seq = last_seq

    def finish(self, reason: str, *, error_code: str = "", error_message: str = "") -> None:
        """End the request once; later calls (a late final after an error) are ignored."""
        if self.done.is_set():
            return
        self.record.t_end_ms = self.clock()
        self.record.finish_reason = reason
        self.record.error_code = error_code
        self.record.error_message = error_message[:300]
        self.done.set()
        if self.on_finish is not None:
            self.on_finish(self)


class Session(abc.ABC):
    """The requests of one job: a flint Session stream, or a set of HTTP streams."""

    @abc.abstractmethod
    async def send(self, state: RequestState, redirect_of: RequestState | None = None) -> None:
        """Send a request; with `redirect_of`, stop that one in the same message where supported."""

    @abc.abstractmethod
    async def interrupt(self, state: RequestState) -> None:
        """Ask the server to stop a request (or close its stream)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the session; requests still open end with error_code 'ABANDONED'."""


class Target(abc.ABC):
    """A server under test; `info` describes it (model, context size) once started."""

    info: dict

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def open_session(self, job_index: int) -> Session: ...

    @abc.abstractmethod
    async def close(self) -> None: ...
