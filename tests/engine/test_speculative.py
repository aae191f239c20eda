"""Prompt-lookup drafting and verification, on their own."""

import torch

from flint.engine.sampling import RequestSampler
from flint.engine.speculative import NgramIndex, verify_greedy, verify_sampled
from flint.engine.types import SamplingParams


def test_ngram_index_drafts_what_followed_the_first_occurrence():
    idx = NgramIndex(ngram_min=2, ngram_max=3, max_draft=4)
    idx.extend([1, 2, 3, 4, 5, 6, 9, 9, 1, 2])
    assert idx.propose() == [3, 4, 5, 6]
    idx.extend([7, 8, 1, 2])                 # [1, 2] is still first followed by 3
    assert idx.propose() == [3, 4, 5, 6]
    assert idx.propose(limit=2) == [3, 4]
    idx.extend([42])
    assert idx.propose() == []               # no earlier occurrence of (2, 42) or (1, 2, 42)


def test_ngram_index_drafts_long_continuations_in_a_loop():
    idx = NgramIndex(ngram_min=2, ngram_max=3, max_draft=4)
    idx.extend([5, 6] * 6)
    assert idx.propose() == [5, 6, 5, 6]


def test_verify_greedy_accepts_the_matching_prefix_then_the_target_token():
    assert verify_greedy([5, 6, 7, 8], [5, 6, 9]) == [5, 6, 7]
    assert verify_greedy([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8]      # all accepted + bonus
    assert verify_greedy([1, 2], [9]) == [1]


def test_rejection_sampling_keeps_the_target_distribution():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    probs = torch.stack([p, p])                               # [k+1 = 2, V]
    sampler = RequestSampler(SamplingParams(temperature=1.0, seed=7))
    n, counts = 20000, torch.zeros(4)
    for _ in range(n):
        first = verify_sampled(probs, [1], sampler)[0]        # the draft always proposes token 1
        counts[first] += 1
    freq = counts / n
    assert torch.allclose(freq, p, atol=0.015), freq          # ~4 sigma at n = 20000
