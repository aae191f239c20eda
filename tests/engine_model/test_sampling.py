"""Sampling: greedy, temperature, top-k/top-p, seeds independent of batching, parameter validation."""

from __future__ import annotations

import pytest
import torch

from flint.engine.sampling import RequestSampler, probs_from_logits, sample, sample_from_probs, validate_sampling
from flint.engine.types import SamplingParams
from flint.errors import InvalidArgument

V = 50


def logits_stream(steps: int, rows: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, V, generator=g) * 2 for _ in range(steps)]


def test_greedy_rows_take_the_argmax():
    logits = logits_stream(1, 4)[0]
    samplers = [RequestSampler(SamplingParams()) for _ in range(4)]
    assert torch.equal(sample(logits, samplers), logits.argmax(-1))


def test_same_seed_same_tokens_regardless_of_batch_neighbours():
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=20, seed=1234)
    steps = logits_stream(30, 3)
    alone = RequestSampler(params)
    alone_tokens = [sample(s[:1], [alone]).item() for s in steps]
    # same request batched with a greedy row and a differently seeded row, in a different row order
    mine = RequestSampler(params)
    others = [RequestSampler(SamplingParams()), RequestSampler(SamplingParams(temperature=1.0, seed=9))]
    batched = [sample(s[[1, 0, 2]], [others[0], mine, others[1]])[1].item() for s in steps]
    assert batched == alone_tokens
    assert len(set(alone_tokens)) > 1                       # it really sampled
    other_seed = RequestSampler(SamplingParams(temperature=0.9, top_p=0.95, top_k=20, seed=99))
    assert [sample(s[:1], [other_seed]).item() for s in steps] != alone_tokens


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = logits_stream(1, 6)[0]
    samplers = [RequestSampler(SamplingParams(temperature=1.5, top_k=1, seed=i)) for i in range(3)]
    samplers += [RequestSampler(SamplingParams(temperature=1.5, top_p=1e-6, seed=i)) for i in range(3)]
    assert torch.equal(sample(logits, samplers), logits.argmax(-1))


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    probs = probs_from_logits(logits, torch.tensor([1.0, 1.0]), torch.tensor([2, 0]), torch.tensor([1.0, 0.7]))
    torch.testing.assert_close(probs[0], torch.tensor([0.625, 0.375, 0.0, 0.0]))   # top-2, renormalised
    torch.testing.assert_close(probs[1], torch.tensor([0.625, 0.375, 0.0, 0.0]))   # 0.5 + 0.3 >= 0.7
    hot = probs_from_logits(logits[:1], torch.tensor([100.0]), torch.tensor([0]), torch.tensor([1.0]))
    assert hot.max() - hot.min() < 0.01                                            # high temperature flattens


def test_samples_follow_the_distribution():
    probs = torch.tensor([[0.1, 0.6, 0.0, 0.3]]).repeat(20000, 1)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sample_from_probs(probs, u), minlength=4).float() / 20000
    assert counts[2] == 0
    torch.testing.assert_close(counts, probs[0], atol=0.015, rtol=0)


def test_request_probs_for_speculative_verification():
    logits = logits_stream(1, 3)[0]
    greedy = RequestSampler(SamplingParams()).probs(logits)
    assert torch.equal(greedy.argmax(-1), logits.argmax(-1)) and torch.all(greedy.sum(-1) == 1)
    warm = RequestSampler(SamplingParams(temperature=0.7, top_k=5, seed=1)).probs(logits)
    assert torch.all((warm > 0).sum(-1) == 5)
    torch.testing.assert_close(warm.sum(-1), torch.ones(3))


@pytest.mark.parametrize("params, needle", [
    (SamplingParams(temperature=-0.1), r"temperature must be a number in \[0, 10\]"),
    (SamplingParams(temperature=float("nan")), "temperature"),
    (SamplingParams(top_p=0.0), r"top_p must be a number in \(0, 1\]"),
    (SamplingParams(top_p=1.5), "top_p"),
    (SamplingParams(top_k=-1), r"top_k must be an integer in \[0, "),
    (SamplingParams(seed=-5), "seed"),
    (SamplingParams(max_tokens=-1), "max_tokens"),
    (SamplingParams(max_time_ms=-1), "max_time_ms"),
    (SamplingParams(stop=("",)), "stop string"),
    (SamplingParams(stop=tuple(str(i) for i in range(17))), "at most 16"),
])
def test_out_of_range_params_are_invalid_argument_naming_the_range(params, needle):
    with pytest.raises(InvalidArgument, match=needle):
        validate_sampling(params)
    with pytest.raises(InvalidArgument):
        RequestSampler(params)
