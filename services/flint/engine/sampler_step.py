"""Choosing the tokens of one step from its logits (greedy, sampled, speculative).

Greedy rows of the whole batch are resolved with one argmax and one host
transfer; sampled requests use their own `RequestSampler` (seeded generator,
`flint.engine.sampling`), so a seed gives the same output whatever else
shares the batch. Speculative entries are verified with
`flint.engine.speculative` (greedy: exact match; sampled: rejection sampling).
"""

from __future__ import annotations

import torch

from flint.engine.model.linear import argmax_rows
from flint.engine.request import Request
from flint.engine.sampling import RequestSampler, sample_from_probs
from flint.engine.speculative import verify_greedy, verify_sampled


def sampler_for(req: Request) -> RequestSampler:
    if req.sampler_state is None:
        req.sampler_state = RequestSampler(req.sampling)
    return req.sampler_state


class TokenChooser:
    def choose(self, logits: torch.Tensor, work: list[tuple[Request, int, list[int] | None]]) -> list[list[int]]:
        """work: (request, its logit row count, draft or None) in row order -> tokens per request."""
        greedy_ids: list[int] | None = None
        out: list[list[int]] = []
        row = 0
        for req, n, draft in work:
            if req.sampling.greedy:
                if greedy_ids is None:
                    greedy_ids = argmax_rows(logits).tolist()
                ids = greedy_ids[row : row + n]
                out.append(verify_greedy(ids, draft) if draft else ids[:1])
            else:
                sampler = sampler_for(req)
                probs = sampler.probs(logits[row : row + n])                    # [n, V]
                if draft:
                    out.append(verify_sampled(probs, draft, sampler))
                else:
                    out.append([int(sample_from_probs(probs[:1], sampler.uniform(1))[0])])
            row += n
        return out
