"""The native kernel's path for short sequences equals SDPA over gathered keys.

A float32 sequence whose visible keys number at most 512 (kShortMaxKeys in kernels/paged_attention.cpp), with
head_dim 64 or 128, is attended in one piece: all its scores, an exact softmax per query over the keys that
query sees, the values, its output rows written directly (no split, no merge). These cases put many such
sequences of different lengths in one step, next to sequences just past the limit (split and merged as
before), with grouped-query heads, causal extends of a few tokens and a sliding window whose edge cuts inside
the short sequences.
"""

import pytest
import torch

from flint.engine.paged_attention import PagedAttention
from test_paged_attention_in_place import _cache, _slot_maps, _step

SHORT_MAX_KEYS = 512


def _batch() -> tuple[list[int], list[int]]:
    """(cached, new) per sequence: decodes and extends of 2-16 tokens from 0 to past SHORT_MAX_KEYS keys."""
    starts = [0, 1, 5, 15, 16, 17, 31, 47, 79, 128, 200, 299, 400, SHORT_MAX_KEYS - 1, SHORT_MAX_KEYS - 3,
              SHORT_MAX_KEYS, SHORT_MAX_KEYS + 7, 0, 2, 60, 250, SHORT_MAX_KEYS - 16, SHORT_MAX_KEYS - 10]
    news = [1] * 17 + [2, 3, 5, 16, 16, 16]
    return starts, news


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("heads, kv, d", [(8, 4, 64), (6, 1, 64), (4, 4, 128), (8, 2, 128)],
                         ids=["gqa2-d64", "mqa6-d64", "mha-d128", "gqa4-d128"])
@pytest.mark.parametrize("window", [None, 24, 300], ids=["full", "window24", "window300"])
def test_many_short_sequences_of_different_lengths_equal_sdpa(threads, heads, kv, d, window):
    gen = torch.Generator().manual_seed(heads * 1000 + d + (window or 0))
    starts, news = _batch()
    num_blocks = sum(-(-(s + n) // 16) for s, n in zip(starts, news))
    k_cache, v_cache = _cache(num_blocks, kv, d, torch.float32, gen)
    maps = _slot_maps([s + n for s, n in zip(starts, news)], num_blocks, gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        attn = PagedAttention(k_cache, v_cache, num_heads=heads, sliding_window=window, native=True)
        out, expected = _step(attn, list(zip(maps, starts, news)), heads, torch.float32, gen)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_scores_far_apart_keep_the_largest_weight_exact():
    """Keys whose scores lie far below the best one (weights under e^-80) leave the output at the best key's
    value, and a row of equal scores averages its values: the exact softmax neither overflows nor loses them."""
    kv, d, heads, n_keys = 2, 64, 4, 40
    k_cache = torch.zeros(1, 64, kv, d)
    v_cache = torch.randn(1, 64, kv, d, generator=torch.Generator().manual_seed(3))
    k_cache[0, :n_keys, :, 0] = -50.0                       # with q[..., 0] = 4 and scale 1/8: scores of -25
    k_cache[0, 17, :, 0] = 400.0                            # one key scoring +200
    attn = PagedAttention(k_cache, v_cache, num_heads=heads, native=True)
    slots = torch.arange(n_keys)
    q = torch.zeros(1, heads, d)
    q[..., 0] = 4.0
    attn.begin_step([(slots, n_keys - 1, 1)])
    out = attn(0, q, k_cache[0, n_keys - 1 : n_keys].clone(), v_cache[0, n_keys - 1 : n_keys].clone())
    group = heads // kv
    for h in range(heads):
        torch.testing.assert_close(out[0, h], v_cache[0, 17, h // group], rtol=1e-5, atol=1e-6)
    k_cache.zero_()                                         # all scores 0: the mean of the visible values
    attn.begin_step([(slots, n_keys - 1, 1)])
    out = attn(0, q, k_cache[0, n_keys - 1 : n_keys].clone(), v_cache[0, n_keys - 1 : n_keys].clone())
    for h in range(heads):
        torch.testing.assert_close(out[0, h], v_cache[0, :n_keys, h // group].mean(0), rtol=1e-5, atol=1e-5)


def test_portable_build_short_sequences_equal_sdpa():
    """The path as AVX2-only machines build it (plain loops) gives the same attention."""
    from flint.engine import kernels

    portable = kernels.load("paged_attention_portable", ["paged_attention.cpp"], ["-DFLINT_PA_NO_AVX512"])
    gen = torch.Generator().manual_seed(31)
    starts, news = _batch()
    num_blocks = sum(-(-(s + n) // 16) for s, n in zip(starts, news))
    k_cache, v_cache = _cache(num_blocks, 2, 64, torch.float32, gen)
    maps = _slot_maps([s + n for s, n in zip(starts, news)], num_blocks, gen)
    for window in (None, 24):
        attn = PagedAttention(k_cache, v_cache, num_heads=6, sliding_window=window, native=True)
        attn._kernel = portable
        out, expected = _step(attn, list(zip(maps, starts, news)), 6, torch.float32, gen)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
