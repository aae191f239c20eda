"""Engine-side request and event types (no protobuf, no torch).

The front-end converts protobuf to these on entry to the engine replica and
back on exit; the engine core only sees these.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field


class FinishReason(enum.IntEnum):
    # Values equal flint.v1.FinishReason.
    EOS = 1
    LENGTH = 2
    STOP = 3
    INTERRUPTED = 4
    TIME_LIMIT = 5


class RequestKind(enum.Enum):
    COMPLETE = "complete"
    EDIT = "edit"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 = off
    seed: int | None = None
    max_tokens: int = 0               # 0 = default for the request kind
    stop: tuple[str, ...] = ()
    max_time_ms: int = 0              # 0 = no limit

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ContextFile:
    path: str
    content: str


@dataclass(frozen=True)
class GenerateRequest:
    """What a front-end asks an engine replica to run."""

    request_id: str
    kind: RequestKind = RequestKind.COMPLETE
    prefix: str = ""
    suffix: str = ""
    code: str = ""                    # edit: region to rewrite
    instruction: str = ""             # edit: what to change
    path: str = ""
    context: tuple[ContextFile, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    session_id: str = ""
    bulk: bool = False
    cache_namespace: str = ""
    arrival_unix_s: float = 0.0       # 0 = now
    seq_offset: int = 0
    # A session document's tokens, split at the cursor (flint.replica.documents: int64 arrays, so a 128K-token
    # document costs no Python int per token); equal to encoding prefix and suffix, which are then empty.
    # None = encode the text fields.
    prefix_ids: Sequence[int] | None = None
    suffix_ids: Sequence[int] | None = None


@dataclass(frozen=True)
class Started:
    request_id: str
    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    request_id: str
    seq: int
    text: str
    token_count: int


@dataclass(frozen=True)
class Timings:
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class Final:
    request_id: str
    seq: int
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int = 0
    timings: Timings = field(default_factory=Timings)
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    withheld_tokens: int = 0          # generated tokens no delta covered (no text; a stop string's tokens)


@dataclass(frozen=True)
class Failed:
    """The engine gave up on a request it had accepted (e.g. not started within the queue timeout)."""

    request_id: str
    error: Exception      # a flint.errors.FlintError: the edge maps it to a status code


Event = Started | Delta | Final | Failed


@dataclass(frozen=True)
class LoadInfo:
    running: int
    waiting: int
    kv_used_fraction: float
    max_context_tokens: int
