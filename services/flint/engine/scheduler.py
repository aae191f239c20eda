"""Latency-first continuous batching: what every request runs this step.

`schedule(now)` returns a `StepPlan`: how many tokens each request computes
this step (a decode is 1 token plus its draft tokens, a prefill chunk is up to
`prefill_chunk_tokens`), which requests were preempted and which waited too
long. Applying the model's output is the engine's job, and so is ending
requests (one place: `Engine._finish`). The policy, read top to bottom:

1. Decodes first: every running request that is decoding gets its step, so a
   prefill never stalls a stream. Decode KV grows on demand
   (`kv_growth_tokens` at a time); when it cannot, the lowest-ranked running
   request is preempted (its KV goes to the prefix cache and it is recomputed
   later, mostly from there), possibly the growing request itself.
2. Admission in rank order (starving first, then interactive before bulk,
   then arrival). Admission allocates the KV of the prompt still to compute,
   never of `max_tokens`. A request that does not fit is skipped, so smaller
   ones behind it still start (no head-of-line blocking); an interactive
   request may preempt bulk work to fit. A request that has waited
   `starvation_steps` steps is starving: it goes first and, while it does not
   fit, nothing else is admitted, so freed KV accumulates for it. A request
   that has not started within its class's queue timeout is rejected (the
   engine answers RESOURCE_EXHAUSTED with a retry delay).
3. Prefill chunks in rank order, short prefills (at most one chunk left)
   before long ones within a class. In a step that carries an interactive
   short prefill (a keystroke), long prefills of other requests shrink to
   `contended_chunk_tokens` (0 = pause for that step) so the keystroke's step
   costs what it costs on an idle replica. While interactive requests keep
   arriving (one within `interactive_window_ms`) or streaming, long prefills
   run chunks of at most `interactive_chunk_tokens`: a keystroke can only
   land behind a step already under way, so that step must be short too.
   A long prefill paused for `starvation_steps` consecutive steps gets its
   chunk anyway.

Between tenants (flint.engine.fair_share): while several tenants have work,
each has an equal share of the batch slots and KV blocks. A tenant below its
share may preempt requests (of the same or a lower class) of a tenant over
it, for a slot or for KV; preemption for KV growth picks bulk first, then
the tenant most over its share, then the latest arrival; a starving request
of a tenant at its share does not block other tenants' admissions. One
tenant alone uses the whole replica.

Why these numbers: loadtests/results/scheduler.md and README (scheduling).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from flint.engine.config import EngineConfig
from flint.engine.fair_share import FairShare
from flint.engine.kv_cache import PagedKVCache
from flint.engine.request import Request, Status


@dataclass
class Scheduled:
    req: Request
    num_tokens: int          # tokens computed this step (a decode's draft tokens are added by the engine)

    @property
    def is_decode(self) -> bool:
        return self.num_tokens == 1 and self.req.num_uncomputed == 1


@dataclass
class StepPlan:
    scheduled: list[Scheduled] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)   # KV released; back in the waiting queue
    timed_out: list[Request] = field(default_factory=list)   # never started within the queue timeout

    def __bool__(self) -> bool:
        return bool(self.scheduled)


class Scheduler:
    def __init__(self, config: EngineConfig, kv: PagedKVCache):
        self.config = config
        self.kv = kv
        self.waiting: tuple[deque[Request], deque[Request]] = (deque(), deque())   # by priority
        self.running: list[Request] = []
        self.last_interactive_arrival = float("-inf")   # arrival_mono of the latest interactive request
        self.fair = FairShare(config.max_batch_size, kv.num_blocks, kv.block_size, self.running)

    @property
    def num_waiting(self) -> int:
        return sum(len(q) for q in self.waiting)

    def has_work(self) -> bool:
        return bool(self.running or self.num_waiting)

    def add(self, req: Request) -> None:
        self.waiting[req.priority].append(req)
        if req.interactive:
            self.last_interactive_arrival = max(self.last_interactive_arrival, req.arrival_mono)

    def remove(self, req: Request) -> None:
        """Take a request out (finished or aborted); the caller releases its KV."""
        if req.status is Status.RUNNING:
            self.running.remove(req)
        else:
            try:
                self.waiting[req.priority].remove(req)
            except ValueError:
                pass

    # -- the policy ------------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        plan = StepPlan()
        self.fair.refresh(self.running, self.waiting)
        budget = self.config.prefill_tokens_per_step
        budget -= self._schedule_decodes(plan)
        self._admit_waiting(plan, now, budget)
        self._schedule_prefills(plan, budget, self._long_chunk_tokens(plan, now))
        return plan

    def _long_chunk_tokens(self, plan: StepPlan, now: float) -> int:
        """Chunk of a long prefill this step: small while interactive work is about (see the docstring)."""
        recent = now - self.last_interactive_arrival <= self.config.interactive_window_ms / 1e3
        streaming = any(s.req.interactive for s in plan.scheduled)
        return self.config.interactive_chunk_tokens if recent or streaming else self.config.prefill_chunk_tokens

    def _schedule_decodes(self, plan: StepPlan) -> int:
        used = 0
        for req in sorted((r for r in self.running if not r.in_prefill), key=self._rank):
            if req.status is not Status.RUNNING:          # preempted by a higher-ranked one's growth
                continue
            want = req.num_computed + 1 + req.lookahead
            if not self._grow(req, want, plan):
                continue
            plan.scheduled.append(Scheduled(req, 1))
            used += 1 + req.lookahead
        return used

    def _admit_waiting(self, plan: StepPlan, now: float, budget: int) -> None:
        starving_blocked = False
        for req in sorted((r for q in self.waiting for r in q), key=self._rank):
            if not starving_blocked and budget > 0 and self._admit(req, plan):
                continue
            if self._starving(req) and not self.fair.at_share(req.tenant):
                starving_blocked = True
            if not req.scheduled_at and now - req.arrival_mono > self.queue_timeout_s(req):
                self.waiting[req.priority].remove(req)
                plan.timed_out.append(req)
        for q in self.waiting:
            for req in q:
                req.waited_steps += 1

    def _schedule_prefills(self, plan: StepPlan, budget: int, long_chunk: int) -> None:
        chunk = self.config.prefill_chunk_tokens
        decoding = {id(s.req) for s in plan.scheduled}
        prefilling = sorted((r for r in self.running if id(r) not in decoding), key=self._prefill_rank)
        keystroke = any(r.interactive and r.num_uncomputed <= chunk for r in prefilling)
        for req in prefilling:
            long = req.num_uncomputed > chunk
            n = min(req.num_uncomputed, long_chunk if long else chunk, budget)
            if keystroke and long and not self._starving(req):
                n = min(n, self.config.contended_chunk_tokens)
            if n <= 0:
                req.paused_steps += 1
                continue
            req.paused_steps = 0
            plan.scheduled.append(Scheduled(req, n))
            budget -= n

    # -- ranks -----------------------------------------------------------------------------------
    def _starving(self, req: Request) -> bool:
        limit = self.config.starvation_steps
        return req.waited_steps >= limit or req.paused_steps >= limit

    def _rank(self, req: Request) -> tuple:
        """Lower runs first and is preempted last: starving ones by arrival, then interactive, then arrival."""
        if self._starving(req):
            return (0, 0, req.arrival_mono)
        return (1, req.priority, req.arrival_mono)

    def _prefill_rank(self, req: Request) -> tuple:
        if self._starving(req):
            return (0, 0, False, req.arrival_mono)
        return (1, req.priority, req.num_uncomputed > self.config.prefill_chunk_tokens, req.arrival_mono)

    def _victim(self, candidates: list[Request]) -> Request:
        """Whom to preempt first: not starving, bulk before interactive, the tenant most over its share, the
        latest arrival (with one tenant active, exactly `_rank`'s order)."""
        usage = self.fair.usage()
        return max(candidates, key=lambda r: (*self._rank(r)[:2], self.fair.excess(usage, r.tenant),
                                              r.arrival_mono))

    def queue_timeout_s(self, req: Request) -> float:
        ms = self.config.queue_timeout_interactive_ms if req.interactive else self.config.queue_timeout_bulk_ms
        return ms / 1e3

    # -- KV: admission, growth, preemption -------------------------------------------------------
    def _admit(self, req: Request, plan: StepPlan) -> bool:
        kv = self.kv
        slot_victim = None
        if len(self.running) >= self.config.max_batch_size:
            slot_victims = self.fair.slot_victims(req)
            if not slot_victims:
                return False
            slot_victim = self._victim(slot_victims)
        match = kv.match(req)
        positions = req.num_tokens + 1 + req.lookahead
        need = kv.blocks_to_admit(req, match, positions)
        victims = self._kv_victims(req, need)
        freed = self._held(victims)
        if slot_victim is not None and all(v is not slot_victim for v in victims):
            freed += self._held([slot_victim])
        if kv.allocator.num_free < need and kv.reclaimable_blocks() + freed < need:
            kv.unmatch(match)
            return False
        if slot_victim is not None:
            self._preempt(slot_victim, plan)
            victims = self._kv_victims(req, need)
        while not kv.reserve(need) and victims:
            self._preempt(self._victim(victims), plan)
            victims = self._kv_victims(req, need)
        if not kv.admit(req, match, positions):
            return False
        kv.grow(req, positions + self.config.kv_growth_tokens - 1, evict=False)   # decode room, if free
        req.slots_grew = False                    # the runner has not seen this slot map yet
        if req.num_preemptions == 0:
            req.num_cached_prompt = req.num_computed
        self.waiting[req.priority].remove(req)
        req.status = Status.RUNNING
        req.paused_steps = 0
        self.running.append(req)
        return True

    def _grow(self, req: Request, positions: int, plan: StepPlan) -> bool:
        """Slots for `positions` positions (plus growth room if free), preempting lower ranks; False if
        `req` itself had to be preempted."""
        if req.num_slots >= positions:
            return True
        if self.kv.grow(req, positions + self.config.kv_growth_tokens - 1, evict=False) or self.kv.grow(req, positions):
            return True
        while True:
            victim = self._victim(self.running)
            self._preempt(victim, plan)
            if victim is req:
                return False
            if self.kv.grow(req, positions):
                return True

    def _preempt(self, req: Request, plan: StepPlan) -> None:
        """Recompute preemption: KV to the prefix cache, back to the head of its waiting queue."""
        for s in plan.scheduled:
            if s.req is req:
                plan.scheduled.remove(s)
                break
        self.running.remove(req)
        self.kv.release(req)
        req.num_computed = 0
        req.status = Status.WAITING
        req.num_preemptions += 1
        self.waiting[req.priority].appendleft(req)
        plan.preempted.append(req)

    def _kv_victims(self, req: Request, need: int) -> list[Request]:
        """Whom `req` may preempt for KV: lower-priority work, and over-share tenants' work (fair_share)."""
        fair = {id(r) for r in self.fair.kv_victims(req, need)}
        return [r for r in self.running if r.priority > req.priority or id(r) in fair]

    def _held(self, requests: list[Request]) -> int:
        return sum(len(r.owned_blocks) for r in requests if r.owned_blocks is not None)
