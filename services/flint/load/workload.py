"""What the load generator sends: request specs grouped into jobs.

A job is what one simulated user does in one go (a typing session, a
repository-context request and its follow-ups, one short completion). Its
steps carry offsets from the job's start; the arrival process decides when
each job starts. Steps of one job share one Session stream, so a step that is
sent while the previous one still streams can interrupt or redirect it,
exactly as an editor does when the user keeps typing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OVERLAP = ("none", "interrupt", "redirect")


@dataclass(frozen=True)
class RequestSpec:
    kind: str = "complete"                      # complete | edit
    prefix: str = ""
    suffix: str = ""
    context: tuple[tuple[str, str], ...] = ()   # (path, content) repository files
    code: str = ""                              # edit: region to rewrite
    instruction: str = ""                       # edit: what to change
    path: str = ""
    max_tokens: int = 64
    temperature: float = 0.0
    seed: int = 0
    # Stop this request ourselves after k tokens and/or after a time from send.
    interrupt_after_tokens: int | None = None
    interrupt_after_ms: float | None = None
    # What to do with the job's previous request if it still streams when this one is sent.
    on_overlap: str = "none"
    label: str = ""
    # Document mode (flint target): the job's Session opens this document with prefix + suffix on its first
    # request, then sends each later request's change as one EditDocument and completes at the cursor by
    # reference (the text is not sent again). "" = full text in every request.
    document_id: str = ""

    @property
    def prompt_chars(self) -> int:
        return (len(self.prefix) + len(self.suffix) + len(self.code) + len(self.instruction)
                + sum(len(c) for _, c in self.context))

    def to_json(self) -> dict:
        data = asdict(self)
        data["context"] = [list(item) for item in self.context]
        return data

    @classmethod
    def from_json(cls, data: dict) -> "RequestSpec":
        data = dict(data)
        data["context"] = tuple(tuple(item) for item in data.get("context", ()))
        return cls(**data)


@dataclass(frozen=True)
class Step:
    offset_ms: float
    spec: RequestSpec


@dataclass(frozen=True)
class Job:
    index: int
    label: str
    steps: tuple[Step, ...] = field(default_factory=tuple)

    @property
    def span_ms(self) -> float:
        """Offset of the last step: how long the user is busy sending this job."""
        return self.steps[-1].offset_ms if self.steps else 0.0
