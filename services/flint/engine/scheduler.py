"""Continuous batching with chunked prefill under a per-step token budget.

The whole policy is `schedule()`, read top to bottom:
1. every running request that is decoding gets its step (1 token plus its
   draft tokens): decode is never stalled behind a prefill;
2. running requests still prefilling get chunks from what is left of the
   token budget, interactive ones before bulk ones;
3. waiting requests are admitted, interactive queue first, while the batch
   has room, the budget has tokens and the KV cache can hold them (admission
   reserves the request's whole KV need, so nothing is preempted later).
Admission is FIFO within a class: a head request that does not fit in KV
blocks the ones behind it rather than being starved by smaller ones.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from flint.engine.config import EngineConfig
from flint.engine.kv_cache import PagedKVCache
from flint.engine.request import Request, Status


@dataclass
class Scheduled:
    req: Request
    num_tokens: int          # prompt tokens of this chunk, or 1 for a decode step (drafts added later)

    @property
    def is_decode(self) -> bool:
        return not self.req.in_prefill


class Scheduler:
    def __init__(self, config: EngineConfig, kv: PagedKVCache):
        self.config = config
        self.kv = kv
        self.interactive: deque[Request] = deque()
        self.bulk: deque[Request] = deque()
        self.running: list[Request] = []

    @property
    def num_waiting(self) -> int:
        return len(self.interactive) + len(self.bulk)

    def has_work(self) -> bool:
        return bool(self.running or self.interactive or self.bulk)

    def add(self, req: Request) -> None:
        (self.interactive if req.interactive else self.bulk).append(req)

    def remove(self, req: Request) -> None:
        """Take a request out (finished or aborted); the caller releases its KV."""
        if req.status is Status.RUNNING:
            self.running.remove(req)
        else:
            queue = self.interactive if req.interactive else self.bulk
            try:
                queue.remove(req)
            except ValueError:
                pass

    def schedule(self) -> list[Scheduled]:
        budget = self.config.prefill_tokens_per_step
        out: list[Scheduled] = []
        prefilling: list[Request] = []
        for req in self.running:
            if req.in_prefill:
                prefilling.append(req)
            else:
                out.append(Scheduled(req, 1))
                budget -= 1 + (self.config.spec_draft_tokens if req.speculate else 0)
        prefilling.sort(key=lambda r: not r.interactive)   # stable: arrival order within a class
        for req in prefilling:
            if budget <= 0:
                break
            n = min(req.prompt_len - req.num_computed, budget)
            out.append(Scheduled(req, n))
            budget -= n
        for queue in (self.interactive, self.bulk):
            while queue and budget > 0 and len(self.running) < self.config.max_batch_size:
                req = queue[0]
                if not self.kv.admit(req):
                    return out
                queue.popleft()
                req.status = Status.RUNNING
                self.running.append(req)
                n = min(req.prompt_len - req.num_computed, budget)
                out.append(Scheduled(req, n))
                budget -= n
        return out
