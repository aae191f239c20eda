"""Attention over the paged KV cache read in place (native kernel) equals SDPA over gathered keys.

Every case runs the native kernel and the PyTorch fallback (what non-CPU devices run) against the same
reference: the sequence's keys gathered by its slot map, one SDPA call with an explicit causal (and
sliding-window) mask.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from flint.engine.paged_attention import IN_PLACE_MAX_TOKENS, PagedAttention, native_kernel

BLOCK = 16
NATIVE = pytest.param(True, id="native")
FALLBACK = pytest.param(False, id="fallback")


@pytest.fixture(scope="module", autouse=True)
def kernel_builds():
    assert native_kernel() is not None, "the native paged attention kernel must build on the test machine"


def _slot_maps(lengths: list[int], num_blocks: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Slot maps over randomly placed blocks (never shared between sequences)."""
    assert sum(-(-n // BLOCK) for n in lengths) <= num_blocks
    order = torch.randperm(num_blocks, generator=gen)
    maps, used = [], 0
    for n in lengths:
        blocks = order[used : used + -(-n // BLOCK)]
        used += len(blocks)
        maps.append((blocks[:, None] * BLOCK + torch.arange(BLOCK)).flatten()[:n])
    return maps


def _reference(q, k_cache, v_cache, slots, start, n, window):
    """q [n, H, D]; sequence keys gathered by slot map -> [n, H, D] in float32."""
    keys = k_cache[slots[: start + n]].transpose(0, 1)[None].float()     # [1, KV, ctx, D]
    values = v_cache[slots[: start + n]].transpose(0, 1)[None].float()
    q_pos = torch.arange(start, start + n)[:, None]
    k_pos = torch.arange(start + n)[None, :]
    allowed = k_pos <= q_pos
    if window:
        allowed &= q_pos - k_pos < window
    o = F.scaled_dot_product_attention(q.transpose(0, 1)[None].float(), keys, values, attn_mask=allowed,
                                       enable_gqa=True)
    return o[0].transpose(0, 1)


def _step(attn: PagedAttention, seqs, heads: int, dtype, gen):
    """One layer-0 step over `seqs` [(slots, start, n)]: fresh k/v written, out vs the reference."""
    kv, d = attn.k_cache.shape[2], attn.k_cache.shape[3]
    t = sum(n for _, _, n in seqs)
    q = torch.randn(t, heads, d, generator=gen).to(dtype)
    k = torch.randn(t, kv, d, generator=gen).to(dtype)
    v = torch.randn(t, kv, d, generator=gen).to(dtype)
    positions = attn.begin_step(seqs)
    out = attn(0, q, k, v)
    row, expected = 0, []
    for slots, start, n in seqs:
        expected.append(_reference(q[row : row + n], attn.k_cache[0], attn.v_cache[0], slots, start, n,
                                   attn.sliding_window))
        row += n
    assert positions.tolist() == [p for _, start, n in seqs for p in range(start, start + n)]
    return out, torch.cat(expected)


def _cache(num_blocks: int, kv: int, d: int, dtype, gen):
    shape = (2, num_blocks * BLOCK, kv, d)                   # [L, S, KV, D]
    return torch.randn(shape, generator=gen).to(dtype), torch.randn(shape, generator=gen).to(dtype)


TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


@pytest.mark.parametrize("native", [NATIVE, FALLBACK])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("heads, kv, d", [(4, 2, 64), (8, 1, 32), (6, 6, 16), (2, 1, 128), (6, 2, 64)],
                         ids=["gqa2", "mqa8", "mha", "d128", "gqa3"])
@pytest.mark.parametrize("window", [None, 40], ids=["full", "window40"])
def test_mixed_batch_of_decodes_and_short_extends_equals_sdpa_over_gathered_keys(native, dtype, heads, kv, d,
                                                                                 window):
    gen = torch.Generator().manual_seed(heads * 100 + d + (window or 0))
    starts = [0, 1, 7, 95, 300, 1200, 37]                   # cached tokens before the step
    news = [1, 3, 1, 16, 1, 9, 2]                            # new tokens: decode rows and short extends
    k_cache, v_cache = _cache(200, kv, d, dtype, gen)
    attn = PagedAttention(k_cache, v_cache, num_heads=heads, sliding_window=window, native=native)
    maps = _slot_maps([s + n for s, n in zip(starts, news)], 200, gen)
    out, expected = _step(attn, list(zip(maps, starts, news)), heads, dtype, gen)
    torch.testing.assert_close(out.float(), expected, **TOL[dtype])


@pytest.mark.parametrize("native", [NATIVE, FALLBACK])
@pytest.mark.parametrize("n", list(range(1, IN_PLACE_MAX_TOKENS + 1)) + [IN_PLACE_MAX_TOKENS + 5])
def test_single_sequence_extend_after_long_cached_context(native, n):
    gen = torch.Generator().manual_seed(n)
    k_cache, v_cache = _cache(400, 2, 64, torch.float32, gen)
    attn = PagedAttention(k_cache, v_cache, num_heads=4, native=native)
    [slots] = _slot_maps([5000 + n], 400, gen)
    out, expected = _step(attn, [(slots, 5000, n)], 4, torch.float32, gen)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", ["descending", "ascending"])
@pytest.mark.parametrize("n", [1, 3])
def test_blocks_in_either_address_order_give_the_same_attention(order, n):
    """The kernel walks a slot map that runs downwards (blocks handed out high to low) from its far end, in
    ascending address order; the result is the same attention either way, window edge and causal tail included."""
    gen = torch.Generator().manual_seed(11 + n)
    k_cache, v_cache = _cache(300, 2, 64, torch.float32, gen)
    blocks = torch.arange(300) if order == "ascending" else torch.arange(299, -1, -1)
    slots = (blocks[:, None] * BLOCK + torch.arange(BLOCK)).flatten()[: 4000 + n]
    for window in (None, 1000):
        attn = PagedAttention(k_cache, v_cache, num_heads=4, sliding_window=window, native=True)
        out, expected = _step(attn, [(slots, 4000, n)], 4, torch.float32, gen)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_portable_path_built_without_avx512_equals_sdpa():
    """The kernel as AVX2-only machines build it (auto-vectorised, tile by tile) gives the same attention."""
    from flint.engine import kernels

    portable = kernels.load("paged_attention_portable", ["paged_attention.cpp"], ["-DFLINT_PA_NO_AVX512"])
    gen = torch.Generator().manual_seed(21)
    k_cache, v_cache = _cache(400, 2, 64, torch.float32, gen)
    starts, news = [5000, 300, 37], [1, 3, 16]
    maps = _slot_maps([s + n for s, n in zip(starts, news)], 400, gen)
    for window in (None, 700):
        attn = PagedAttention(k_cache, v_cache, num_heads=6, sliding_window=window, native=True)
        attn._kernel = portable
        out, expected = _step(attn, list(zip(maps, starts, news)), 6, torch.float32, gen)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_long_chunk_beside_short_sequences_in_one_step():
    """A long prefill chunk keeps the gathered flash path; the short sequences of the step attend in place."""
    gen = torch.Generator().manual_seed(5)
    k_cache, v_cache = _cache(100, 2, 32, torch.float32, gen)
    attn = PagedAttention(k_cache, v_cache, num_heads=4, native=True)
    maps = _slot_maps([301, 100 + 64, 51], 100, gen)
    out, expected = _step(attn, [(maps[0], 300, 1), (maps[1], 100, 64), (maps[2], 40, 11)], 4, torch.float32, gen)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_several_threads_split_the_context_and_merge_to_the_same_output():
    gen = torch.Generator().manual_seed(6)
    k_cache, v_cache = _cache(900, 2, 64, torch.float32, gen)
    maps = _slot_maps([9000, 4000 + 5], 900, gen)
    seqs = [(maps[0], 8999, 1), (maps[1], 4000, 5)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        attn = PagedAttention(k_cache, v_cache, num_heads=4, native=True)
        out, expected = _step(attn, seqs, 4, torch.float32, gen)
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


class _LargestOutput(TorchDispatchMode):
    """Records the largest new tensor (not a view of another) any aten op produces, in elements."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in (*args, *(kwargs or {}).values())
                  if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs
                    and t.numel() > self.largest):
                self.largest, self.op = t.numel(), func
        return out


@pytest.mark.parametrize("news", [[1], [1, 1, 1], [3], [16, 1]], ids=["decode", "decode-batch", "keystroke",
                                                                       "extend-batch"])
def test_decode_and_short_extend_copy_no_cached_keys_or_values(news):
    """No op of a step's attention makes a tensor that grows with the context: K/V are read where they lie."""
    gen = torch.Generator().manual_seed(7)
    kv, d, start = 2, 64, 4096
    k_cache, v_cache = _cache(800, kv, d, torch.float32, gen)
    attn = PagedAttention(k_cache, v_cache, num_heads=4)
    maps = _slot_maps([start + n for n in news], 800, gen)
    seqs = [(m, start, n) for m, n in zip(maps, news)]
    t = sum(news)
    q, k, v = torch.randn(t, 4, d), torch.randn(t, kv, d), torch.randn(t, kv, d)
    attn.begin_step(seqs)
    with _LargestOutput() as seen:
        attn(0, q, k, v)
        attn(1, q, k, v)
    assert seen.largest < start * kv * d // 8, f"{seen.op} made a tensor of {seen.largest} elements"


def _greedy_outputs(checkpoint) -> tuple[dict[str, list[int]], bool]:
    """Greedy outputs of a batch of requests, then of keystrokes: a few new tokens after a cached prefix."""
    from flint.engine.config import EngineConfig
    from flint.engine.engine import Engine

    engine = Engine.from_config(EngineConfig(model=str(checkpoint), kv_cache_bytes=16 << 20, block_size=16,
                                             num_threads=1))
    engine.recorded_outputs = {}
    gen = torch.Generator().manual_seed(8)
    document = torch.randint(3, 200, (900,), generator=gen).tolist()
    for i, n in enumerate((900, 37, 300)):
        engine.add_tokens(f"batch{i}", document[i : i + n], 12)
    engine.run_until_done()
    for i, extra in enumerate(([5], [5, 9, 11], list(range(20, 36)))):      # 1, 3 and 16 new tokens
        req = engine.add_tokens(f"key{i}", document + extra, 4)
        engine.run_until_done()
        assert req.num_cached_prompt >= len(document) - 16      # only the keystroke's tokens were new
    assert engine.no_leaks()
    return engine.recorded_outputs, engine.runner.attn.native


def test_engine_greedy_outputs_equal_the_pytorch_fallback(demo_checkpoint, monkeypatch):
    native, used_kernel = _greedy_outputs(demo_checkpoint)
    monkeypatch.setattr("flint.engine.paged_attention.native_kernel", lambda: None)   # as without a compiler
    fallback, used_fallback_kernel = _greedy_outputs(demo_checkpoint)
    assert used_kernel and not used_fallback_kernel
    assert native == fallback and len(native) == 6


@pytest.mark.parametrize("native", [NATIVE, FALLBACK])
@pytest.mark.parametrize("news", [[1, 1, 1, 1], [1], [5], [1, 3, 1, 16, 40, 2], [IN_PLACE_MAX_TOKENS + 5]],
                         ids=["decode", "decode-one", "extend-one", "mixed-with-chunk", "chunk-only"])
def test_cpu_step_plan_equals_the_plan_built_with_tensor_ops(native, news):
    """begin_step on the CPU builds its index tensors from numpy views; other devices build them with torch ops
    on the device. Both give the same positions, write slots, in-place sequences and long chunks."""
    gen = torch.Generator().manual_seed(len(news))
    starts = [3 + 11 * i for i in range(len(news))]
    k_cache, v_cache = _cache(100, 2, 16, torch.float32, gen)
    maps = _slot_maps([s + n + 5 for s, n in zip(starts, news)], 100, gen)   # longer than start + n, as the engine's
    seqs = list(zip(maps, starts, news))
    fast, slow = (PagedAttention(k_cache, v_cache, num_heads=4, native=native) for _ in range(2))
    positions = fast.begin_step(seqs)
    assert positions.tolist() == slow._begin_step_tensors(seqs).tolist()
    assert fast._write_slots.tolist() == slow._write_slots.tolist()
    assert [(c.row, c.start, c.n, c.key_slots.tolist()) for c in fast._chunks] == \
           [(c.row, c.start, c.n, c.key_slots.tolist()) for c in slow._chunks]
    if native:
        assert fast._all_short == slow._all_short
        assert [m.data_ptr() for m in fast._short_slots] == [m.data_ptr() for m in slow._short_slots]
        assert (fast._short_meta is None) == (slow._short_meta is None)
        if fast._short_meta is not None:
            assert fast._short_meta.tolist() == slow._short_meta.tolist()
    else:
        for name in ("_decode_rows", "_decode_slots", "_decode_mask"):
            a, b = getattr(fast, name), getattr(slow, name)
            assert (a is None and b is None) or a.tolist() == b.tolist(), name
