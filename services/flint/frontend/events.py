"""What a request owner tells the edge: plain events, no protobuf.

A `RequestOwner` (flint.frontend.owner) emits, per request, one `Accepted`,
then `Delta`s numbered 1, 2, 3, ..., then exactly one `Final` or one
`Failed`. The gRPC edge renders them to flint.v1.ServerMessage
(flint.frontend.render); another edge (HTTP/SSE) renders the same events
its own way, so seq numbering, accounting and every kind of ending are
decided once, in the owner.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from flint.engine.types import FinishReason  # plain enum, values equal flint.v1.FinishReason
from flint.errors import FlintError

__all__ = ["Accepted", "Delta", "Event", "Failed", "Final", "FinishReason", "Timings", "is_terminal"]


@dataclass(frozen=True)
class Accepted:
    request_id: str
    prompt_tokens: int


@dataclass(frozen=True)
class Delta:
    request_id: str
    seq: int                    # 1, 2, 3, ... with no gaps; numbered by the owner only
    text: str
    token_count: int            # generated tokens this delta covers


@dataclass(frozen=True)
class Timings:
    queue_ms: float = 0.0
    prefill_ms: float = 0.0
    first_token_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0       # front-end arrival of the request -> its Final, on every path


@dataclass(frozen=True)
class Final:
    request_id: str
    seq: int                    # last delta's seq + 1
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    replica_id: str = ""
    timings: Timings = field(default_factory=Timings)
    # Generated tokens no delta covers (no text, or a stop string's): the deltas' token_counts plus this equal
    # completion_tokens.
    withheld_tokens: int = 0


@dataclass(frozen=True)
class Failed:
    """The request ended with an error instead of a Final (the edge maps it to a status)."""

    request_id: str
    error: FlintError


Event = Union[Accepted, Delta, Final, Failed]
TERMINAL = (Final, Failed)


def is_terminal(event: Event) -> bool:
    return isinstance(event, TERMINAL)
