"""Per-request state inside the engine: one small object per request.

Token ids live in a preallocated int64 numpy array (prompt + room for the
output and speculative lookahead): appending a token is a scalar store and a
step hands the model a zero-copy view, never a converted Python list; `slots` likewise maps every token position to its KV slot.
Derived values are properties.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from flint.engine.types import FinishReason, GenerateRequest, SamplingParams


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_ids: np.ndarray                  # [P] int64
    sampling: SamplingParams
    max_tokens: int
    namespace: str                          # prefix-cache namespace (model + tenant)
    interactive: bool
    speculate: bool
    arrival_s: float                        # time.time() of arrival
    arrival_mono: float                     # time.perf_counter() equivalent of arrival
    seq_offset: int = 0
    lookahead: int = 0                      # extra positions for speculative draft tokens
    stop_token_ids: frozenset = frozenset()  # EOS and template end tokens
    stop_strings: tuple[str, ...] = ()       # the request's stop strings and the template's
    source: GenerateRequest | None = None

    status: Status = Status.WAITING
    tokens: np.ndarray = field(init=False)         # [capacity] int64: prompt then output
    num_tokens: int = field(init=False)            # prompt + output tokens so far
    num_computed: int = 0                          # tokens whose KV is in the cache
    num_cached_prompt: int = 0                     # prompt tokens served from the prefix cache
    slots: torch.Tensor | None = None              # [capacity] int64 KV slot per token position
    owned_blocks: np.ndarray | None = None         # blocks this request allocated
    cache_node: Any = None                         # locked radix node of the matched prefix
    detok: Any = None                              # incremental detokenizer
    sampler_state: Any = None                      # per-request generator (seeded sampling)
    ngram: Any = None                              # prompt-lookup index (speculation)
    next_seq: int = 0
    pending_tokens: int = 0                        # tokens whose text the detokenizer still holds
    deadline: float = 0.0                          # perf_counter time limit; 0 = none
    finish_reason: FinishReason | None = None
    abort_requested: bool = False
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    # Timestamps (perf_counter seconds); 0 = not yet.
    scheduled_at: float = 0.0
    first_token_at: float = 0.0
    prefill_done_at: float = 0.0
    last_token_at: float = 0.0

    def __post_init__(self) -> None:
        self.num_tokens = len(self.prompt_ids)
        self.tokens = np.zeros(self.capacity, dtype=np.int64)
        self.tokens[: self.num_tokens] = self.prompt_ids
        self.next_seq = self.seq_offset + 1

    @property
    def capacity(self) -> int:
        """Token positions this request may ever occupy (prompt, output, draft lookahead)."""
        return len(self.prompt_ids) + self.max_tokens + self.lookahead

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_output(self) -> int:
        return self.num_tokens - self.prompt_len

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < self.prompt_len

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def last_token(self) -> int:
        return int(self.tokens[self.num_tokens - 1])

    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len : self.num_tokens].tolist()

    def append(self, token_ids: list[int]) -> None:
        n = len(token_ids)
        self.tokens[self.num_tokens : self.num_tokens + n] = token_ids
        self.num_tokens += n

    def take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq


def now_pair() -> tuple[float, float]:
    """(wall clock, monotonic) read together, to map arrival times onto perf_counter."""
    return time.time(), time.perf_counter()
