"""fp32 Linears over panel-packed weights (flint.engine.model.packed, kernels/skinny_f32.cpp linear_packed).

The loader packs every float32 CPU Linear; the kernel must compute what F.linear does for any row count, give a
row the same bits alone or beside others, and a loaded model must decode what the unpacked model decodes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flint.engine import kernels
from flint.engine.loader import load_model
from flint.engine.model import linear
from flint.engine.model.dense import DenseAttention
from flint.engine.model.packed import PackedEmbedding, PackedLinear, pack_model


def _kernel():
    k = linear._kernel()
    assert k is not None, "skinny_f32 did not build: see the log for the compiler's message"
    return k


def _reference(x, w, b):
    return F.linear(x.double(), w.double(), None if b is None else b.double()).float()


@pytest.mark.parametrize("n,k", [(64, 32), (1000, 300), (19, 37), (130, 1536)])
def test_pack_then_unpack_gives_the_matrix_back_and_pads_the_last_panel_with_zeros(n, k):
    w = torch.randn(n, k)
    p = _kernel().pack_f32(w)
    assert p.shape == ((n + 63) // 64, k, 64)
    assert torch.equal(_kernel().unpack_f32(p, n), w)
    assert torch.count_nonzero(p.transpose(1, 2).reshape(-1, k)[n:]) == 0


@pytest.mark.parametrize("rows", [1, 2, 5, 6, 7, 16, 33, 200])
@pytest.mark.parametrize("n,k,bias", [(3072, 512, False), (19, 37, True), (130, 1536, False), (64, 8, True)])
def test_any_row_count_matches_f_linear(rows, n, k, bias):
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    w, x = torch.randn(n, k, generator=g), torch.randn(rows, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    layer = PackedLinear(w, b)
    torch.testing.assert_close(layer(x), _reference(x, w, b), rtol=1e-5, atol=2e-4)
    x3 = x.reshape(1, rows, k)                                  # leading dims are kept
    assert layer(x3).shape == (1, rows, n)


@pytest.mark.parametrize("rows", [1, 7, 40])
def test_fused_norm_residual_and_silu_match_the_separate_ops(rows):
    g = torch.Generator().manual_seed(rows)
    n, k, floor = 96, 80, 0.05
    w, x, res = torch.randn(n, k, generator=g), torch.randn(rows, k, generator=g), torch.randn(rows, n, generator=g)
    layer = PackedLinear(w)
    unit = x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), torch.tensor(floor))
    torch.testing.assert_close(layer.forward_unit_rms(x, floor), _reference(unit, w, None), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(layer.forward_fused(x, residual=res), res + _reference(x, w, None),
                               rtol=1e-5, atol=2e-4)
    gate_up = torch.randn(rows, 2 * k, generator=g)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(layer.forward_fused(gate_up, silu=True, residual=res),
                               res + _reference(F.silu(gate) * up, w, None), rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("rows", [2, 6, 16, 100])
def test_a_row_gets_the_same_bits_alone_or_beside_other_rows(rows):
    g = torch.Generator().manual_seed(rows)
    w, x, b = torch.randn(200, 512, generator=g), torch.randn(rows, 512, generator=g), torch.randn(200, generator=g)
    layer = PackedLinear(w, b)
    together = layer.forward_unit_rms(x, 0.01)
    alone = torch.cat([layer.forward_unit_rms(x[i:i + 1], 0.01) for i in range(rows)])
    assert torch.equal(together, alone)


def test_bad_shapes_and_token_ids_raise_with_what_to_change():
    k = _kernel()
    p = k.pack_f32(torch.randn(100, 16))
    with pytest.raises(RuntimeError, match="do not hold 100 outputs of 8 inputs"):
        k.linear_packed(torch.randn(2, 8), p, 100, None)
    with pytest.raises(RuntimeError, match=r"do not hold 300 outputs"):
        k.linear_packed(torch.randn(2, 16), p, 300, None)
    with pytest.raises(RuntimeError, match=r"token id 100 is outside the vocabulary \[0, 100\)"):
        k.embedding_packed(torch.tensor([3, 100]), p, 100)


def test_pack_model_packs_fp32_linears_and_ties_the_embedding_to_the_head_panels():
    model = nn.Module()
    model.embed = nn.Embedding(200, 48)
    model.lm_head = nn.Linear(48, 200, bias=False)
    model.lm_head.weight = model.embed.weight                   # tied
    model.proj = nn.Linear(48, 24)
    model.bf16 = nn.Linear(48, 24, dtype=torch.bfloat16)
    ids = torch.tensor([0, 63, 64, 199, 5])
    before_rows, before_proj = model.embed(ids), model.proj(torch.ones(3, 48))
    pack_model(model)
    assert isinstance(model.lm_head, PackedLinear) and isinstance(model.proj, PackedLinear)
    assert isinstance(model.embed, PackedEmbedding) and model.embed.packed is model.lm_head.packed
    assert type(model.bf16) is nn.Linear, "only float32 weights are packed"
    assert torch.equal(model.embed(ids), before_rows)
    assert torch.equal(model.embed(ids.view(1, 5)), before_rows.view(1, 5, 48))
    torch.testing.assert_close(model.proj(torch.ones(3, 48)), before_proj, rtol=1e-5, atol=1e-5)


def _logits(checkpoint, ids: list[int]) -> tuple[torch.nn.Module, torch.Tensor]:
    """The loaded model and its logits for a 10-token prefill then one-token decode steps (dense attention)."""
    model = load_model(checkpoint)
    attn = DenseAttention.for_model(model)
    attn.add_sequence("s", max_tokens=64)
    got = [model.compute_logits(model(torch.tensor(ids[:10]), attn.begin_step([("s", 10)]), attn))]
    for token in ids[10:]:
        got.append(model.compute_logits(model(torch.tensor([token]), attn.begin_step([("s", 1)]), attn)))
    return model, torch.cat(got)


@pytest.mark.parametrize("fixture", ["llama_checkpoint", "qwen2_checkpoint"])   # untied; tied with a qkv bias
def test_the_loader_packs_the_model_and_its_logits_match_the_unpacked_model(fixture, request, monkeypatch):
    checkpoint = request.getfixturevalue(fixture)
    ids = torch.randint(3, 500, (16,), generator=torch.Generator().manual_seed(7)).tolist()
    model, got = _logits(checkpoint, ids)
    layer = model.layers[0]
    assert all(type(m) is PackedLinear for m in (layer.qkv, layer.o_proj, layer.gate_up, layer.down, model.lm_head))
    assert (type(model.embed) is PackedEmbedding) == (fixture == "qwen2_checkpoint")
    monkeypatch.setenv("FLINT_NATIVE_LINEAR", "0")   # no kernel: the model keeps its Linears and runs F.linear
    linear._kernel.cache_clear()
    try:
        plain, want = _logits(checkpoint, ids)
    finally:
        linear._kernel.cache_clear()
    assert type(plain.layers[0].qkv) is linear.Linear
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_avx2_build_gives_the_same_bits_as_this_machines_build():
    """Machines of the pool differ (AVX2 only, or AVX-512): each output is the same fma chain in k order on
    either, so an AVX2 build of the kernel (half-panel 256-bit blocks of 3 rows) matches this machine's bits."""
    if "avx2" not in kernels.cpu_flags():
        pytest.skip("this CPU cannot run an AVX2 build")
    avx2 = kernels.load("skinny_f32_avx2", kernels.KERNELS["skinny_f32"], ["-march=haswell", "-mtune=generic"])
    assert avx2.fma_width() == 8
    g = torch.Generator().manual_seed(3)
    for rows, n, k in ((1, 130, 512), (5, 64, 37), (16, 1000, 300)):
        w, x, b = torch.randn(n, k, generator=g), torch.randn(rows, k, generator=g), torch.randn(n, generator=g)
        p = avx2.pack_f32(w)
        assert torch.equal(p, _kernel().pack_f32(w))
        got = avx2.linear_packed(x, p, n, b, 0.01)
        assert torch.equal(got, _kernel().linear_packed(x, p, n, b, 0.01))
        torch.testing.assert_close(got, _reference(x / torch.hypot(x.norm(dim=-1, keepdim=True), torch.tensor(0.01)),
                                                   w, b), rtol=1e-5, atol=2e-4)
