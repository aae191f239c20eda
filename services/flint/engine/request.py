"""Per-request state inside the engine: one small object per request.

Token ids live in a preallocated int64 numpy array (prompt + room for the
output and speculative lookahead): appending a token is a scalar store and a
step hands the model a zero-copy view, never a converted Python list. `slots`
likewise maps token positions to KV slots; it is filled as KV is allocated
(the cached prefix and the prompt at admission, decode room on demand), so
only `slots[:num_slots]` is valid. Derived values are properties.

A request computes KV for `tokens[:num_tokens]` and samples at the last one:
a new request's prompt, a decode step's last token, or, after preemption, the
prompt plus the output so far (recomputed, mostly from the prefix cache).
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
    session_id: str = ""                     # a session continuing its document: prefix-match hint key
    tenant: str = ""                         # who sent it (the front-end's cache_namespace): fair shares

    status: Status = Status.WAITING
    tokens: np.ndarray = field(init=False)         # [capacity] int64: prompt then output
    num_tokens: int = field(init=False)            # prompt + output tokens so far
    num_computed: int = 0                          # tokens whose KV is in the cache
    num_cached_prompt: int = 0                     # prompt tokens served from the prefix cache
    slots: torch.Tensor | None = None              # [capacity] int64 KV slot per position; [:num_slots] valid
    num_slots: int = 0                             # positions that have a KV slot
    slots_grew: bool = False                       # slot map grew since the runner last saw it
    owned_blocks: np.ndarray | None = None         # blocks this request allocated
    cache_node: Any = None                         # locked radix node of the matched prefix
    cache_depth: int = 0                           # tokens on the path to cache_node
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
    # Scheduling (flint.engine.scheduler): steps spent waiting for admission, consecutive steps a
    # running prefill got no chunk, and how often this request was preempted.
    waited_steps: int = 0
    paused_steps: int = 0
    num_preemptions: int = 0
    # Timestamps (perf_counter seconds); 0 = not yet.
    scheduled_at: float = 0.0
    first_token_at: float = 0.0
    prefill_done_at: float = 0.0
    last_token_at: float = 0.0
    # `slot_map`'s view, kept while `slots` and `num_slots` stay the same (a decode step reads it per request).
    _slot_view: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

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
    def priority(self) -> int:
        """0 = interactive, 1 = bulk (lower runs first)."""
        return 0 if self.interactive else 1

    @property
    def num_uncomputed(self) -> int:
        """Tokens whose KV is still to be computed (the last one is fed to sample the next)."""
        return self.num_tokens - self.num_computed

    @property
    def in_prefill(self) -> bool:
        """More than one token to compute: a prompt, or a preempted request's recompute."""
        return self.num_uncomputed > 1

    @property
    def slot_map(self) -> torch.Tensor:
        """[num_slots] int64: the KV slots allocated so far (what the runner reads). The same view object while
        the slot map does not change (slicing a tensor costs ~1 us; a 16-stream step asks for 16)."""
        view = self._slot_view
        if view is None or view.shape[0] != self.num_slots or view._base is not self.slots:
            view = self._slot_view = self.slots[: self.num_slots]
        return view

    @property
    def finished(self) -> bool:
        return self.status is Status.FINISHED

    @property
    def last_token(self) -> int:
        return int(self.tokens[self.num_tokens - 1])

    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len : self.num_tokens].tolist()

    def append(self, token_ids) -> None:
        n = len(token_ids)
        if n == 1:                                   # a scalar store: ~0.1 us, a slice from a list ~0.8 us
            self.tokens[self.num_tokens] = token_ids[0]
        else:
            self.tokens[self.num_tokens : self.num_tokens + n] = token_ids
        self.num_tokens += n

    def take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq


def now_pair() -> tuple[float, float]:
    """(wall clock, monotonic) read together, to map arrival times onto perf_counter."""
    return time.time(), time.perf_counter()
