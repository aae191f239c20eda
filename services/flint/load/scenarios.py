"""Named, seeded, versioned workloads.

`make_scenario(name, seed, params)` returns a Scenario whose `job(i)` is a pure
function of (name, version, seed, params, i): two runs with the same recorded
parameters send the same text at the same offsets. A change to what a
scenario generates bumps its version. Unknown parameters are errors that list
the allowed ones. Sizes are tokens, turned into characters with
`chars_per_token` (see flint.load.textgen).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from flint.config import from_mapping
from flint.errors import InvalidArgument
from flint.load import textgen
from flint.load.workload import OVERLAP, Job, RequestSpec, Step

Range = tuple[float, float]


def _uniform(rng: random.Random, bounds) -> float:
    lo, hi = bounds
    return rng.uniform(lo, hi)


def _randint(rng: random.Random, bounds) -> int:
    lo, hi = bounds
    return rng.randint(int(lo), int(hi))


def _check_range(name: str, bounds) -> None:
    if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2 and 0 <= bounds[0] <= bounds[1]):
        raise InvalidArgument(f"scenario parameter {name} must be [low, high] with 0 <= low <= high, got {bounds!r}")


@dataclass(frozen=True)
class CommonParams:
    chars_per_token: float = textgen.DEFAULT_CHARS_PER_TOKEN
    temperature: float = 0.0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
                value = tuple(value)
            if isinstance(value, tuple) and f.name.endswith(("_ms", "_tokens", "tokens")) and len(value) == 2:
                _check_range(f.name, value)
        if self.chars_per_token <= 0:
            raise InvalidArgument(f"chars_per_token must be > 0, got {self.chars_per_token}")
        if getattr(self, "overlap", "none") not in OVERLAP:
            raise InvalidArgument(f"overlap must be one of {', '.join(OVERLAP)}")


class Scenario(abc.ABC):
    """Base: subclasses set name, version, Params and implement `_job(rng, index)`."""

    name = ""
    version = 1
    Params: type = CommonParams

    def __init__(self, seed: int, params: dict[str, Any] | None = None):
        self.seed = int(seed)
        self.params = from_mapping(self.Params, params or {}, where=f"scenario {self.name} params")

    def job(self, index: int) -> Job:
        rng = random.Random(f"{self.name}:{self.version}:{self.seed}:{index}")
        return self._job(rng, index)

    @abc.abstractmethod
    def _job(self, rng: random.Random, index: int) -> Job:
        """Job number `index`, drawn from `rng` only (so it depends on nothing but seed and index)."""

    def describe(self) -> dict:
        return {"name": self.name, "version": self.version, "seed": self.seed,
                "params": {k: list(v) if isinstance(v, tuple) else v
                           for k, v in dataclasses.asdict(self.params).items()}}

    def _code(self, seed: int, tokens: float) -> str:
        return _cached_code(seed, int(tokens), self.params.chars_per_token)


@functools.lru_cache(maxsize=64)
def _cached_code(seed: int, tokens: int, chars_per_token: float) -> str:
    return textgen.code(seed, tokens, chars_per_token)


@functools.lru_cache(maxsize=8)
def _cached_repo(seed: int, tokens: int, chars_per_token: float) -> tuple[tuple[str, str], ...]:
    return tuple(textgen.repository(seed, tokens, chars_per_token))


# ------------------------------------------------------------------ keystroke
@dataclass(frozen=True)
class KeystrokeParams(CommonParams):
    file_tokens: Range = (512, 2048)        # text before the cursor when the session starts
    suffix_tokens: Range = (64, 512)
    lines: Range = (1, 3)                   # lines typed per session
    inter_key_ms: Range = (150, 250)
    fast_key_fraction: float = 0.2          # keys typed in quick bursts, merged by the debounce
    fast_key_ms: Range = (40, 100)
    debounce_ms: float = 100.0
    line_pause_ms: Range = (500, 1500)
    max_tokens: Range = (16, 48)
    overlap: str = "redirect"               # what a new request does to the previous one still streaming
    files: int = 16                         # distinct files the simulated users edit
    documents: bool = False                 # document mode: open the file once, then edits + cursor completions


class Keystroke(Scenario):
    """A developer types; after each pause longer than the debounce a FIM request extends the last one."""

    name = "keystroke"
    Params = KeystrokeParams

    def _job(self, rng, index):
        p = self.params
        file_seed = rng.randrange(p.files)
        head = self._code(file_seed, _randint(rng, p.file_tokens))
        tail = self._code(10_000 + file_seed, _randint(rng, p.suffix_tokens))
        writer = textgen.CodeWriter(rng.randrange(1 << 30))
        typed, keys, t = "", [], 0.0
        for _ in range(_randint(rng, p.lines)):
            for ch in writer.typed_line():
                fast = rng.random() < p.fast_key_fraction
                t += _uniform(rng, p.fast_key_ms if fast else p.inter_key_ms)
                typed += ch
                keys.append((t, typed))
            t += _uniform(rng, p.line_pause_ms)
        steps = []
        for i, (t_key, text) in enumerate(keys):
            next_key = keys[i + 1][0] if i + 1 < len(keys) else float("inf")
            if next_key - t_key > p.debounce_ms:      # the debounce timer fires before the next key
                steps.append(Step(t_key + p.debounce_ms, RequestSpec(
                    prefix=head + text, suffix=tail, path=f"src/file_{file_seed}.py",
                    max_tokens=_randint(rng, p.max_tokens), temperature=p.temperature,
                    seed=rng.randrange(1 << 31), on_overlap=p.overlap if steps else "none", label=self.name,
                    document_id=f"src/file_{file_seed}.py" if p.documents else "")))
        t0 = steps[0].offset_ms if steps else 0.0
        return Job(index, self.name, tuple(Step(s.offset_ms - t0, s.spec) for s in steps))


# ------------------------------------------------------------------ FIM
@dataclass(frozen=True)
class FimParams(CommonParams):
    prompt_tokens: Range = (768, 1280)
    suffix_fraction: float = 0.2
    max_tokens: Range = (16, 128)
    warm_prefix_tokens: int = 0             # a shared file head (prefix-cache warm) before the varying part
    warm_prefixes: int = 4                  # distinct shared heads


class ShortFim(Scenario):
    """One FIM completion: ~1K-token prompt, 16-128 new tokens."""

    name = "short-fim"
    Params = FimParams

    def _job(self, rng, index):
        p = self.params
        total = _randint(rng, p.prompt_tokens)
        suffix_tokens = int(total * p.suffix_fraction)
        head = self._code(20_000 + rng.randrange(p.warm_prefixes), p.warm_prefix_tokens) if p.warm_prefix_tokens else ""
        prefix = head + textgen.code(rng.randrange(1 << 30), total - suffix_tokens, p.chars_per_token)
        suffix = textgen.code(rng.randrange(1 << 30), suffix_tokens, p.chars_per_token)
        spec = RequestSpec(prefix=prefix, suffix=suffix, path=f"src/m{index % 97}.py", temperature=p.temperature,
                           max_tokens=_randint(rng, p.max_tokens), seed=rng.randrange(1 << 31), label=self.name)
        return Job(index, self.name, (Step(0.0, spec),))


@dataclass(frozen=True)
class LargeFimParams(FimParams):
    prompt_tokens: Range = (64, 256)        # the varying part after the warm head
    suffix_fraction: float = 0.0
    warm_prefix_tokens: int = 8192
    suffix_tokens: int = 1024


class LargeFim(ShortFim):
    """~8K-token prefix shared with earlier requests (warm prefix cache), ~1K suffix."""

    name = "large-fim"
    Params = LargeFimParams

    def _job(self, rng, index):
        job = super()._job(rng, index)
        spec = job.steps[0].spec
        suffix = self._code(30_000 + index % self.params.warm_prefixes, self.params.suffix_tokens)
        return Job(index, self.name, (Step(0.0, dataclasses.replace(spec, suffix=suffix, label=self.name)),))


# ------------------------------------------------------------------ repository context
@dataclass(frozen=True)
class RepoParams(CommonParams):
    context_tokens: Range = (32768, 131072)
    repos: int = 2
    file_tokens: Range = (256, 1024)
    followups: Range = (2, 5)
    followup_gap_ms: Range = (1000, 3000)
    max_tokens: Range = (16, 64)
    overlap: str = "interrupt"


class RepoContext(Scenario):
    """First request carries 32K-128K tokens of repository context; follow-ups extend the prefix."""

    name = "repo-context"
    Params = RepoParams

    def _job(self, rng, index):
        p = self.params
        repo = rng.randrange(p.repos)
        context = _cached_repo(40_000 + repo, _randint(rng, p.context_tokens), p.chars_per_token)
        prefix = self._code(50_000 + repo, _randint(rng, p.file_tokens))
        writer = textgen.CodeWriter(rng.randrange(1 << 30))
        steps, t = [], 0.0
        for i in range(1 + _randint(rng, p.followups)):
            if i:
                prefix += writer.typed_line()
                t += _uniform(rng, p.followup_gap_ms)
            steps.append(Step(t, RequestSpec(prefix=prefix, context=context, path=f"src/r{repo}.py",
                                             max_tokens=_randint(rng, p.max_tokens), temperature=p.temperature,
                                             on_overlap=p.overlap if i else "none", label=self.name)))
        return Job(index, self.name, tuple(steps))


# ------------------------------------------------------------------ edit
@dataclass(frozen=True)
class EditParams(CommonParams):
    code_tokens: Range = (256, 1536)
    output_factor: float = 1.1              # max_tokens = code tokens x this: the rewrite copies most input
    context_tokens: Range = (0, 512)


_INSTRUCTIONS = ("rename the loop variable", "add type hints", "return early when the input is empty",
                 "log the result", "replace the magic numbers with named constants", "add a docstring")


class Edit(Scenario):
    """Fast-apply: a function or file rewritten with small changes."""

    name = "edit"
    Params = EditParams

    def _job(self, rng, index):
        p = self.params
        tokens = _randint(rng, p.code_tokens)
        ctx = _randint(rng, p.context_tokens)
        spec = RequestSpec(kind="edit", code=textgen.code(rng.randrange(1 << 30), tokens, p.chars_per_token),
                           instruction=rng.choice(_INSTRUCTIONS), prefix=self._code(60_000 + index % 8, ctx),
                           path=f"src/e{index % 31}.py", max_tokens=max(1, int(tokens * p.output_factor)),
                           temperature=p.temperature, label=self.name)
        return Job(index, self.name, (Step(0.0, spec),))


# ------------------------------------------------------------------ interrupt / redirect
@dataclass(frozen=True)
class InterruptParams(FimParams):
    max_tokens: Range = (96, 128)
    after_tokens: Range = (1, 32)
    after_ms: Range = (20, 500)
    by_time_fraction: float = 0.5           # share interrupted at a random time rather than after k tokens


class Interrupt(ShortFim):
    """A short FIM stopped by the client after k tokens or at a random time."""

    name = "interrupt"
    Params = InterruptParams

    def _job(self, rng, index):
        spec = super()._job(rng, index).steps[0].spec
        if rng.random() < self.params.by_time_fraction:
            spec = dataclasses.replace(spec, interrupt_after_ms=_uniform(rng, self.params.after_ms))
        else:
            spec = dataclasses.replace(spec, interrupt_after_tokens=_randint(rng, self.params.after_tokens))
        return Job(index, self.name, (Step(0.0, dataclasses.replace(spec, label=self.name)),))


@dataclass(frozen=True)
class RedirectParams(FimParams):
    redirect_after_ms: Range = (30, 300)
    extra_chars: Range = (1, 12)


class Redirect(ShortFim):
    """A FIM request redirected mid-stream to one whose prefix extends it."""

    name = "redirect"
    Params = RedirectParams

    def _job(self, rng, index):
        first = dataclasses.replace(super()._job(rng, index).steps[0].spec, label=self.name)
        extra = textgen.CodeWriter(rng.randrange(1 << 30)).typed_line()[:_randint(rng, self.params.extra_chars)]
        second = dataclasses.replace(first, prefix=first.prefix + extra, on_overlap="redirect")
        return Job(index, self.name, (Step(0.0, first), Step(_uniform(rng, self.params.redirect_after_ms), second)))


SCENARIOS: dict[str, type[Scenario]] = {cls.name: cls for cls in
                                        (Keystroke, ShortFim, LargeFim, RepoContext, Edit, Interrupt, Redirect)}


# ------------------------------------------------------------------ mixes
@dataclass(frozen=True)
class MixParams:
    weights: dict[str, float] = field(default_factory=lambda: {"keystroke": 0.6, "short-fim": 0.3, "edit": 0.1})
    params: dict[str, dict] = field(default_factory=dict)   # per-component parameters

    def __post_init__(self):
        unknown = sorted(set(self.weights) - set(SCENARIOS))
        if unknown or not self.weights or any(w < 0 for w in self.weights.values()) \
                or sum(self.weights.values()) <= 0:
            raise InvalidArgument(f"mix weights must map scenario names ({', '.join(SCENARIOS)}) to weights >= 0 "
                                  f"with a positive sum; got {self.weights!r}")


class Mix(Scenario):
    """Jobs drawn from other scenarios by weight; each component keeps its own seeded stream."""

    name = "mix"
    Params = MixParams

    def __init__(self, seed, params=None):
        super().__init__(seed, params)
        self.parts = {n: SCENARIOS[n](seed, self.params.params.get(n, {})) for n in self.params.weights}

    def _job(self, rng, index):
        names = sorted(self.parts)
        name = rng.choices(names, weights=[self.params.weights[n] for n in names])[0]
        return dataclasses.replace(self.parts[name].job(index), index=index)

    def describe(self):
        out = super().describe()
        out["params"]["params"] = {n: s.describe()["params"] for n, s in self.parts.items()}
        return out


def make_scenario(name: str, seed: int = 0, params: dict | None = None) -> Scenario:
    """A scenario by name: one of SCENARIOS, `mix`, or `replay` (params: {trace: PATH})."""
    factories: dict[str, Callable[..., Scenario]] = {**SCENARIOS, "mix": Mix}
    if name == "replay":
        from flint.load.trace import Replay

        factories["replay"] = Replay
    if name not in factories:
        raise InvalidArgument(f"unknown scenario {name!r}; choose one of {', '.join([*factories, 'replay'])}")
    return factories[name](seed, params)
