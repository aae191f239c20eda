"""Prompt-lookup (n-gram) speculative decoding.

Drafting: the last n tokens of a request (n from `ngram_max` down to
`ngram_min`) are looked up among earlier positions of its prompt + output;
the tokens that followed its FIRST occurrence are the draft. First, not
latest: in an edit the first occurrence is in the code region being copied,
and in a repeating loop the first occurrence has the longest continuation
(the latest one runs into the end of the sequence after a token or two:
measured 1 draft token per step instead of up to k). The index maps each
n-gram to the position after its first occurrence and is updated per
appended token, so drafting costs O(1) per step, not O(context).

Verification: the engine runs [last token, d1..dk] in one forward pass and
gets target logits at k+1 positions.
- greedy: accept drafts while they equal the target argmax; then emit the
  target token at the first mismatch (or the bonus token after all k). The
  output is token-for-token what plain greedy decoding gives.
- sampling: the draft is deterministic (q = point mass), so standard
  rejection sampling reduces to: accept d_i with probability p_i(d_i); on
  rejection sample from p_i with d_i removed (renormalised). Emitted tokens
  are distributed exactly as the target's.
"""

from __future__ import annotations

import torch


class NgramIndex:
    def __init__(self, ngram_min: int, ngram_max: int, max_draft: int):
        self.ngram_min, self.ngram_max, self.max_draft = ngram_min, ngram_max, max_draft
        self._tokens: list[int] = []
        self._next: list[dict[tuple[int, ...], int]] = [{} for _ in range(ngram_max + 1)]

    def extend(self, tokens: list[int]) -> None:
        seq, maps = self._tokens, self._next
        for t in tokens:
            seq.append(t)
            i = len(seq) - 1          # the n-gram ending just before i is followed by position i
            for n in range(self.ngram_min, min(self.ngram_max, i) + 1):
                maps[n].setdefault(tuple(seq[i - n : i]), i)

    def propose(self, limit: int | None = None) -> list[int]:
        k = self.max_draft if limit is None else min(limit, self.max_draft)
        seq = self._tokens
        if k <= 0:
            return []
        for n in range(min(self.ngram_max, len(seq)), self.ngram_min - 1, -1):
            p = self._next[n].get(tuple(seq[len(seq) - n :]))
            if p is not None:
                return seq[p : p + k]
        return []


def verify_greedy(target: list[int], draft: list[int]) -> list[int]:
    """target: argmax ids at [last, d1..dk]; returns the accepted drafts plus one target token."""
    out = []
    for i, d in enumerate(draft):
        if target[i] != d:
            break
        out.append(d)
    out.append(target[len(out)])
    return out


def verify_sampled(probs: torch.Tensor, draft: list[int], sampler) -> list[int]:
    """Rejection sampling against a deterministic draft; returns accepted drafts plus one sampled token.

    probs [k+1, V]: the target distribution (after temperature/top-k/top-p) at [last, d1..dk];
    `sampler` is the request's `flint.engine.sampling.RequestSampler` (its seeded random stream).
    """
    from flint.engine.sampling import sample_from_probs

    out: list[int] = []
    u = sampler.uniform(len(draft)).tolist()
    accept_p = probs[torch.arange(len(draft)), torch.tensor(draft, dtype=torch.int64)].tolist()
    for i, d in enumerate(draft):
        if u[i] < accept_p[i]:
            out.append(d)
            continue
        residual = probs[i].clone()
        residual[d] = 0.0                                       # max(0, p - q) with q the point mass on d
        out.append(int(sample_from_probs(residual[None], sampler.uniform(1))[0]))
        return out
    out.append(int(sample_from_probs(probs[len(draft)][None], sampler.uniform(1))[0]))
    return out
