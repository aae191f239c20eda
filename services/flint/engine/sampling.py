"""Token sampling: greedy, temperature, top-k, top-p, per-request seeds, batched with per-row params.

Each request owns a `RequestSampler` with its own `torch.Generator`, and a
sampled token consumes exactly one uniform draw from it (inverse-CDF
sampling), so a seeded request produces the same tokens whatever else is in
the batch. Greedy rows draw nothing. The vectorised work (temperature,
top-k/top-p masks, softmax, cumulative sums) runs once for the whole batch.

Speculative decoding (rejection sampling) needs the target and draft
distributions after temperature/top-k/top-p: `RequestSampler.probs(logits)`
gives them, `RequestSampler.uniform(n)` draws from the request's generator and
`sample_from_probs` turns a distribution plus a uniform draw into a token.

Public API (stable):
    validate_sampling(params) -> None                 InvalidArgument naming the allowed range
    RequestSampler(params, device="cpu")              .greedy, .probs(logits [N, V]), .uniform(n)
    sample(logits [B, V], samplers) -> LongTensor [B]
    probs_from_logits(logits [B, V], temperature [B], top_k [B], top_p [B]) -> float32 [B, V]
    sample_from_probs(probs [B, V], u [B]) -> LongTensor [B]
"""

from __future__ import annotations

import math
import secrets
from typing import Sequence

import torch

from flint.engine.types import SamplingParams
from flint.errors import InvalidArgument

MAX_TEMPERATURE = 10.0
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_SEED = 2**63 - 1


def validate_sampling(p: SamplingParams) -> None:
    def number(name: str, value, lo: float, hi: float, *, lo_open: bool = False) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > lo if lo_open else value >= lo) and value <= hi
        if not ok:
            bound = "(" if lo_open else "["
            raise InvalidArgument(f"sampling.{name} must be a number in {bound}{lo:g}, {hi:g}], got {value!r}")

    def integer(name: str, value, lo: int, hi: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InvalidArgument(f"sampling.{name} must be an integer in [{lo}, {hi}], got {value!r}")

    number("temperature", p.temperature, 0.0, MAX_TEMPERATURE)
    number("top_p", p.top_p, 0.0, 1.0, lo_open=True)
    integer("top_k", p.top_k, 0, 2**31 - 1)
    if p.seed is not None:
        integer("seed", p.seed, 0, MAX_SEED)
    integer("max_tokens", p.max_tokens, 0, 2**31 - 1)
    integer("max_time_ms", p.max_time_ms, 0, 2**31 - 1)
    if len(p.stop) > MAX_STOP_STRINGS:
        raise InvalidArgument(f"sampling.stop allows at most {MAX_STOP_STRINGS} strings, got {len(p.stop)}")
    for s in p.stop:
        if not isinstance(s, str) or not 1 <= len(s) <= MAX_STOP_CHARS:
            raise InvalidArgument(f"each stop string must have 1 to {MAX_STOP_CHARS} characters, got {s!r}")


class RequestSampler:
    """One request's sampling parameters and random stream."""

    def __init__(self, params: SamplingParams, device: torch.device | str = "cpu"):
        validate_sampling(params)
        self.params = params
        self.greedy = params.greedy
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.device = torch.device(device)

    def uniform(self, n: int = 1) -> torch.Tensor:
        """n draws in [0, 1) from this request's generator (float32 [n])."""
        return torch.rand(n, generator=self.generator, device=self.device)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [N, V] of this request -> its sampling distribution [N, V] (float32)."""
        n, p = logits.shape[0], self.params
        if self.greedy:  # the distribution greedy decoding samples from: all mass on the argmax
            out = torch.zeros_like(logits, dtype=torch.float32)
            return out.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
        full = lambda v, dtype: torch.full((n,), v, dtype=dtype, device=logits.device)  # noqa: E731
        return probs_from_logits(logits, full(p.temperature, torch.float32), full(p.top_k, torch.long),
                                 full(p.top_p, torch.float32))


def probs_from_logits(
    logits: torch.Tensor,       # [B, V]
    temperature: torch.Tensor,  # [B] float, > 0
    top_k: torch.Tensor,        # [B] long, 0 = off
    top_p: torch.Tensor,        # [B] float in (0, 1]
) -> torch.Tensor:
    """Distribution after temperature, top-k, then top-p (the smallest set reaching mass top_p)."""
    scaled = logits.float() / temperature[:, None]
    vocab = scaled.shape[-1]
    if bool((top_k > 0).any()) or bool((top_p < 1).any()):
        sorted_logits, order = scaled.sort(dim=-1, descending=True)               # [B, V]
        ranks = torch.arange(vocab, device=scaled.device)[None, :]
        k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab)[:, None]
        sorted_logits = sorted_logits.masked_fill(ranks >= k, float("-inf"))
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs                   # mass of better tokens
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p[:, None], float("-inf"))
        scaled = torch.empty_like(scaled).scatter_(-1, order, sorted_logits)
    return scaled.softmax(dim=-1)


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row i picks the first token whose cumulative mass exceeds u[i] x total."""
    cdf = probs.cumsum(dim=-1)                                                    # [B, V]
    target = (u.to(cdf.dtype) * cdf[:, -1])[:, None]                              # [B, 1]
    idx = torch.searchsorted(cdf, target, right=True).clamp_(max=probs.shape[-1] - 1)
    # float rounding can land past the last token with mass: fall back to the most likely token then
    ok = probs.gather(-1, idx) > 0
    return torch.where(ok, idx, probs.argmax(-1, keepdim=True)).squeeze(-1)


def sample(logits: torch.Tensor, samplers: Sequence[RequestSampler]) -> torch.Tensor:
    """logits [B, V] (one row per request, in `samplers` order) -> next tokens [B] (int64)."""
    greedy = logits.argmax(dim=-1)
    rows = [i for i, s in enumerate(samplers) if not s.greedy]
    if not rows:
        return greedy
    picked = [samplers[i] for i in rows]
    dev = logits.device
    sub = logits[rows] if len(rows) < len(samplers) else logits
    probs = probs_from_logits(
        sub,
        torch.tensor([s.params.temperature for s in picked], dtype=torch.float32, device=dev),
        torch.tensor([s.params.top_k for s in picked], dtype=torch.long, device=dev),
        torch.tensor([s.params.top_p for s in picked], dtype=torch.float32, device=dev),
    )
    u = torch.cat([s.uniform(1) for s in picked])
    tokens = sample_from_probs(probs, u)
    if len(rows) == len(samplers):
        return tokens
    return greedy.index_copy(0, torch.tensor(rows, device=dev), tokens)
