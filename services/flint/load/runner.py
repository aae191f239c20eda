"""One generator process: runs its share of the schedule against a target.

Open-loop jobs start at their precomputed intended times whatever the server
does; a job's steps go out at their offsets on one session, interrupting or
redirecting the previous step when it still streams. Every request is
bounded: the run stops starting jobs at `duration_s`, sends at most its share
of `max_requests`, and abandons what is still open `drain_s` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from flint.errors import Unavailable
from flint.load.arrival import open_schedule, share
from flint.load.config import RunConfig
from flint.load.monitor import SelfMonitor
from flint.load.record import RequestRecord
from flint.load.scenarios import make_scenario
from flint.load.targets import RequestState, Session, make_target
from flint.load.workload import Job

SESSION_LEAD_MS = 100.0   # open a job's session this early so its first request is not late


@dataclass
class Counters:
    """Live counts for the progress display."""
    sent: int = 0
    done: int = 0
    errors: int = 0
    tokens: int = 0


@dataclass
class GeneratorResult:
    index: int
    records: list[RequestRecord]
    stats: dict
    target_info: dict
    scheduled_jobs: int
    scheduled_requests: int = 0
    extra: dict = field(default_factory=dict)


def build_schedule(cfg: RunConfig, scenario) -> list[tuple[float, int]]:
    """The whole run's [(intended start ms, job index)]: a replayed trace's own, else the arrival process's."""
    if hasattr(scenario, "schedule"):
        return [(t, i) for t, i in scenario.schedule() if t < cfg.bounds.duration_s * 1000.0]
    return open_schedule(cfg.arrival, cfg.seed, cfg.bounds.duration_s, lambda i: scenario.job(i).span_ms)


class Generator:
    def __init__(self, config: RunConfig, index: int = 0, start_at: float | None = None,
                 counters: Counters | None = None):
        self.config, self.index = config, index
        self.scenario = make_scenario(config.scenario, config.seed, config.params)
        # ms since the common start; start_at is a wall-clock instant shared by all generators.
        start_at = start_at if start_at is not None else time.time() + 0.3
        self._origin = time.perf_counter() + (start_at - time.time())
        self.counters = counters or Counters()
        self.records: list[RequestRecord] = []
        n, k = config.generators, index
        self.request_budget = config.bounds.max_requests // n + (1 if k < config.bounds.max_requests % n else 0)

    def clock(self) -> float:
        return (time.perf_counter() - self._origin) * 1000.0

    async def _sleep_until(self, t_ms: float) -> None:
        delay = (t_ms - self.clock()) / 1000.0
        if delay > 0:
            await asyncio.sleep(delay)

    @property
    def _deadline_ms(self) -> float:
        return (self.config.bounds.duration_s + self.config.bounds.drain_s) * 1000.0

    async def run(self) -> GeneratorResult:
        self.target = make_target(self.config.target, self.clock)
        try:
            await self.target.start()
        except (asyncio.TimeoutError, OSError) as exc:
            await self.target.close()
            raise Unavailable(f"cannot reach the {self.config.target.protocol} target at "
                              f"{self.config.target.address} within {self.config.target.connect_timeout_s:g} s "
                              f"({type(exc).__name__}); is the server running there?") from exc
        monitor = SelfMonitor()
        monitor.start()
        try:
            if self.config.arrival.kind == "closed" and not hasattr(self.scenario, "schedule"):
                scheduled = await self._run_closed()
            else:
                scheduled = await self._run_open()
        finally:
            stats = await monitor.stop()
            await self.target.close()
        stats.update(index=self.index, requests=len(self.records))
        return GeneratorResult(self.index, self.records, stats, dict(self.target.info), scheduled)

    async def _run_open(self) -> int:
        cfg = self.config
        schedule = build_schedule(cfg, self.scenario)
        mine = share(schedule, self.index, cfg.generators)
        if mine:
            self.scenario.job(mine[0][1])    # fill the scenario's text caches before the first send is due
        tasks: list[asyncio.Task] = []
        for t_ms, job_index in mine:
            if self.request_budget <= 0:
                break
            await self._sleep_until(t_ms - SESSION_LEAD_MS)
            tasks.append(asyncio.create_task(self._run_job(self.scenario.job(job_index), t_ms)))
        await self._wait_all(tasks)
        return len(tasks)

    async def _run_closed(self) -> int:
        cfg, arrival = self.config, self.config.arrival
        loops = [c for c in range(arrival.concurrency) if c % cfg.generators == self.index]
        started = 0

        async def loop(c: int) -> None:
            nonlocal started
            import random

            rng, k = random.Random(f"closed:{cfg.seed}:{c}"), 0
            t_ready = self.clock()
            while t_ready < cfg.bounds.duration_s * 1000.0 and self.request_budget > 0:
                started += 1
                await self._run_job(self.scenario.job(c + k * arrival.concurrency), t_ready)
                k += 1
                t_ready = self.clock() + rng.uniform(*arrival.think_time_ms)
                await self._sleep_until(t_ready)

        await self._wait_all([asyncio.create_task(loop(c)) for c in loops])
        return started

    async def _wait_all(self, tasks: list[asyncio.Task]) -> None:
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, (self._deadline_ms - self.clock()) / 1000.0))
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task

    async def _run_job(self, job: Job, t_start_ms: float) -> None:
        try:
            session = await self.target.open_session(job.index)
        except Exception as exc:  # the server refused the session: every step is an error
            for step in job.steps:
                self._record_failure(job, step, t_start_ms + step.offset_ms, type(exc).__name__, str(exc))
            return
        states: list[RequestState] = []
        try:
            prev: RequestState | None = None
            for i, step in enumerate(job.steps):
                t_intended = t_start_ms + step.offset_ms
                if self.request_budget <= 0 or t_intended > self.config.bounds.duration_s * 1000.0:
                    break
                self.request_budget -= 1
                await self._sleep_until(t_intended)
                state = self._new_state(job, i, step.spec, t_intended)
                states.append(state)
                await self._send(session, state, prev if prev is not None and not prev.done.is_set() else None)
                prev = state
            for state in states:
                remaining_s = (self._deadline_ms - self.clock()) / 1000.0
                timeout_s = min(self.config.target.request_timeout_s, max(0.0, remaining_s))
                try:
                    await asyncio.wait_for(state.done.wait(), timeout_s)
                except asyncio.TimeoutError:
                    state.finish("error", error_code="TIMEOUT", error_message="no final within the request timeout")
        finally:
            with contextlib.suppress(Exception):
                await session.close()

    def _new_state(self, job: Job, step: int, spec, t_intended: float) -> RequestState:
        record = RequestRecord(id=f"g{self.index}-j{job.index}-s{step}", job=job.index, step=step, label=spec.label,
                               kind=spec.kind, generator=self.index, t_intended_ms=round(t_intended, 4),
                               max_tokens=spec.max_tokens, prompt_chars=spec.prompt_chars)
        self.records.append(record)
        state = RequestState(spec, record, self.clock)
        state.on_finish = self._account     # progress counts each request as it ends, not when its job does
        return state

    async def _send(self, session: Session, state: RequestState, prev: RequestState | None) -> None:
        spec = state.spec
        if spec.interrupt_after_tokens is not None:
            state.on_tokens = lambda s: (s.tokens >= spec.interrupt_after_tokens and s.record.t_interrupt_ms is None
                                         and asyncio.ensure_future(session.interrupt(s)))
        try:
            if prev is not None and spec.on_overlap == "interrupt":
                await session.interrupt(prev)
            await session.send(state, redirect_of=prev if spec.on_overlap == "redirect" else None)
        except Exception as exc:
            state.finish("error", error_code=type(exc).__name__, error_message=str(exc))
            return
        self.counters.sent += 1
        if spec.interrupt_after_ms is not None:
            asyncio.get_running_loop().call_later(spec.interrupt_after_ms / 1000.0,
                                                  lambda: asyncio.ensure_future(session.interrupt(state)))

    def _record_failure(self, job: Job, step, t_intended: float, code: str, message: str) -> None:
        record = RequestRecord(id=f"g{self.index}-j{job.index}-s{job.steps.index(step)}", job=job.index,
                               step=job.steps.index(step), label=step.spec.label, kind=step.spec.kind,
                               generator=self.index, t_intended_ms=t_intended, t_sent_ms=self.clock(),
                               t_end_ms=self.clock(), finish_reason="error", error_code=code,
                               error_message=message[:300])
        self.records.append(record)
        self.counters.errors += 1
        self.counters.done += 1

    def _account(self, state: RequestState) -> None:
        self.counters.done += 1
        self.counters.tokens += state.tokens
        self.counters.errors += 0 if state.record.ok else 1
