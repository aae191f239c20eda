"""flint's few-row float32 Linear kernel (engine/kernels/skinny_f32.cpp) computes what F.linear does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flint.engine.model import linear
from flint.engine.model.linear import MAX_ROWS, Linear


def test_the_kernel_builds_on_this_machine():
    assert linear.native_available(), "skinny_f32 did not build: see the log for the compiler's message"


@pytest.mark.parametrize("rows", [1, 2, 3, MAX_ROWS])
@pytest.mark.parametrize("k,n,bias", [(512, 3072, False), (37, 19, True), (64, 8, True), (1536, 512, False)])
def test_few_rows_match_f_linear(rows, k, n, bias, monkeypatch):
    g = torch.Generator().manual_seed(rows * 1000 + k + n)
    layer = Linear(k, n, bias=bias).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n, k, generator=g))
        if bias:
            layer.bias.copy_(torch.randn(n, generator=g))
    x = torch.randn(rows, k, generator=g)
    kernel, calls = linear._kernel(), []

    class Spy:
        def linear_f32(self, *args):
            calls.append(args[0].shape)
            return kernel.linear_f32(*args)

    monkeypatch.setattr(linear, "_kernel", Spy)
    got = layer(x)
    assert calls == [x.shape], "few-row float32 products go to the kernel"
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-4)


def test_more_rows_and_other_dtypes_use_f_linear():
    layer = Linear(16, 8).requires_grad_(False)
    x = torch.randn(MAX_ROWS + 1, 16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias))
    half = Linear(16, 8, dtype=torch.bfloat16).requires_grad_(False)
    xb = torch.randn(2, 16, dtype=torch.bfloat16)
    torch.testing.assert_close(half(xb), F.linear(xb, half.weight, half.bias))


@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS])
def test_unit_rms_and_silu_mul_match_torch(rows):
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 96, generator=g) * 3
    floor = torch.tensor(0.05)
    assert linear._few_rows(x) is not None
    torch.testing.assert_close(linear.unit_rms(x, floor, 0.05),
                               x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), floor))
    gate, up = x.chunk(2, dim=-1)
    torch.testing.assert_close(linear.silu_mul(x), F.silu(gate) * up)


@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS])
def test_rms_linear_fuses_the_norm_into_the_kernel_call_and_matches_the_two_ops(rows, monkeypatch):
    g = torch.Generator().manual_seed(rows + 7)
    layer = Linear(96, 40, bias=True).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 96, generator=g))
        layer.bias.copy_(torch.randn(40, generator=g))
    x = torch.randn(rows, 96, generator=g) * 3
    floor = torch.tensor(0.05)
    kernel, calls = linear._kernel(), []

    class Spy:
        def linear_f32(self, *args):
            calls.append(args[3] if len(args) > 3 else None)   # the unit_rms floor
            return kernel.linear_f32(*args)

        def unit_rms_f32(self, *args):
            calls.append("unit_rms")
            return kernel.unit_rms_f32(*args)

    monkeypatch.setattr(linear, "_kernel", Spy)
    got = linear.rms_linear(layer, x, floor, 0.05)
    assert calls == [0.05], "one kernel call, with the floor, and no separate norm"
    ref = F.linear(x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), floor), layer.weight, layer.bias)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    wide = torch.randn(MAX_ROWS + 1, 96, generator=g)   # more rows: the two torch ops
    ref = F.linear(wide / torch.hypot(torch.linalg.vector_norm(wide, dim=-1, keepdim=True), floor), layer.weight, layer.bias)
    torch.testing.assert_close(linear.rms_linear(layer, wide, floor, 0.05), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 5, MAX_ROWS])
def test_residual_add_and_silu_fold_into_one_kernel_call_and_match_the_ops(rows, monkeypatch):
    g = torch.Generator().manual_seed(rows + 11)
    o_proj, down = Linear(64, 48, bias=False).requires_grad_(False), Linear(80, 48, bias=True).requires_grad_(False)
    with torch.no_grad():
        for layer in (o_proj, down):
            layer.weight.copy_(torch.randn(*layer.weight.shape, generator=g))
        down.bias.copy_(torch.randn(48, generator=g))
    x, residual = torch.randn(rows, 64, generator=g), torch.randn(rows, 48, generator=g)
    gate_up = torch.randn(rows, 160, generator=g)
    kernel, calls = linear._kernel(), []

    class Spy:
        def linear_f32(self, *args):
            calls.append(args[4:])   # (residual, silu)
            return kernel.linear_f32(*args)

    monkeypatch.setattr(linear, "_kernel", Spy)
    got = linear.linear_add(o_proj, x, residual)
    torch.testing.assert_close(got, residual + F.linear(x, o_proj.weight), rtol=1e-5, atol=1e-5)
    gate, up = gate_up.chunk(2, dim=-1)
    got = linear.silu_linear_add(down, gate_up, residual)
    torch.testing.assert_close(got, residual + F.linear(F.silu(gate) * up, down.weight, down.bias), rtol=1e-5, atol=1e-5)
    assert [len(c) for c in calls] == [2, 2] and calls[0][0] is residual and calls[1][0] is residual
    assert [c[1] for c in calls] == [False, True], "one call each, silu folded into down's"


def test_final_norm_on_the_kernel_and_greedy_argmax_match_torch():
    g = torch.Generator().manual_seed(3)
    x, weight, eps = torch.randn(4, 96, generator=g) * 5, torch.rand(96, generator=g) + 0.5, 1e-5
    got = linear.rms_norm(x, weight * 96**0.5, weight, eps, (96 * eps) ** 0.5)
    torch.testing.assert_close(got, F.rms_norm(x, (96,), weight, eps), rtol=1e-5, atol=1e-5)
    logits = torch.randn(6, 16_000, generator=g)
    logits[2, 7] = logits[2, 9000] = 100.0            # ties: the first index, as torch.argmax
    assert linear.argmax_rows(logits).tolist() == logits.argmax(dim=-1).tolist()
    assert linear.argmax_rows(logits).tolist()[2] == 7
    logits[4, 123] = float("nan")                      # a broken row: torch's answer (the NaN's index)
    assert linear.argmax_rows(logits).tolist() == logits.argmax(dim=-1).tolist()
    assert linear.argmax_rows(logits[1:5:2]).tolist() == logits[1:5:2].argmax(dim=-1).tolist()   # strided rows


@pytest.mark.parametrize("k", [512, 1536, 100])
def test_a_row_gets_the_same_bits_alone_or_beside_other_rows(k):
    """Decode multiplies one row, speculative verification and batched decode several: the kernel blocks
    rows for speed but must give each row the bits it gets alone, or verification could disagree with
    plain greedy decoding at a near-tie."""
    g = torch.Generator().manual_seed(k)
    layer = Linear(k, 300, bias=True).requires_grad_(False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(300, k, generator=g))
        layer.bias.copy_(torch.randn(300, generator=g))
    x = torch.randn(MAX_ROWS, k, generator=g)
    together = layer(x)
    for rows in (2, 3, 5, 16):
        assert torch.equal(layer(x[:rows]), together[:rows])
    for r in (0, 4, MAX_ROWS - 1):
        assert torch.equal(layer(x[r : r + 1]), together[r : r + 1]), f"row {r} alone differs"


def test_the_layer_after_attention_is_one_call_equal_to_the_three_fused_calls(monkeypatch):
    g = torch.Generator().manual_seed(5)
    d, inter = 64, 96
    o_proj, gate_up, down = (Linear(i, o, bias=False).requires_grad_(False)
                             for i, o in ((d, d), (d, 2 * inter), (inter, d)))
    with torch.no_grad():
        for layer in (o_proj, gate_up, down):
            layer.weight.copy_(torch.randn(*layer.weight.shape, generator=g) / 8)
    o, x = torch.randn(3, d, generator=g), torch.randn(3, d, generator=g)
    x1 = linear.linear_add(o_proj, o, x)
    expected = linear.silu_linear_add(down, linear.rms_linear(gate_up, x1, torch.tensor(0.05), 0.05), x1)
    assert torch.equal(linear.mlp_block(o_proj, gate_up, down, o, x, 0.05), expected)
    o_proj.bias = torch.nn.Parameter(torch.zeros(d), requires_grad=False)   # a bias: the caller runs the three calls
    assert linear.mlp_block(o_proj, gate_up, down, o, x, 0.05) is None
