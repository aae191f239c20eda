"""flint's fp32 CPU kernels for the decode step (engine/kernels/skinny_f32.cpp) compute what torch does, and the
model's fused calls (norm + Linear, Linear + residual, silu + Linear + residual, the layer after attention) are
one kernel call each on the packed Linears the loader makes (model/packed.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flint.engine.model import linear, packed
from flint.engine.model.linear import MAX_ROWS, Linear
from flint.engine.model.packed import PackedLinear


def test_the_kernel_builds_on_this_machine():
    assert linear.native_available(), "skinny_f32 did not build: see the log for the compiler's message"


def _spy(monkeypatch, calls: list, record):
    """Route packed.py's kernel calls through a spy that appends record(name, args) to `calls`."""
    kernel = linear._kernel()

    class Spy:
        def __getattr__(self, name):
            fn = getattr(kernel, name)

            def call(*args):
                calls.append(record(name, args))
                return fn(*args)
            return call

    monkeypatch.setattr(packed, "_kernel", Spy)


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


@pytest.mark.parametrize("rows", [1, 3, MAX_ROWS, 100])
def test_rms_linear_fuses_the_norm_into_the_kernel_call_and_matches_the_two_ops(rows, monkeypatch):
    g = torch.Generator().manual_seed(rows + 7)
    w, b = torch.randn(40, 96, generator=g), torch.randn(40, generator=g)
    layer = PackedLinear(w, b)
    x = torch.randn(rows, 96, generator=g) * 3
    floor = torch.tensor(0.05)
    calls = []
    _spy(monkeypatch, calls, lambda name, args: (name, args[4] if len(args) > 4 else None))   # the unit_rms floor
    got = linear.rms_linear(layer, x, floor, 0.05)
    assert calls == [("linear_packed", 0.05)], "one kernel call, with the floor, and no separate norm"
    ref = F.linear(x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), floor), w, b)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    plain = Linear(96, 40).requires_grad_(False)                # an unpacked Linear: the two torch ops
    with torch.no_grad():
        plain.weight.copy_(w)
        plain.bias.copy_(b)
    torch.testing.assert_close(linear.rms_linear(plain, x, floor, 0.05), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [1, 5, MAX_ROWS])
def test_residual_add_and_silu_fold_into_one_kernel_call_and_match_the_ops(rows, monkeypatch):
    g = torch.Generator().manual_seed(rows + 11)
    w_o, w_down, b_down = torch.randn(48, 64, generator=g), torch.randn(48, 80, generator=g), torch.randn(48, generator=g)
    o_proj, down = PackedLinear(w_o), PackedLinear(w_down, b_down)
    x, residual = torch.randn(rows, 64, generator=g), torch.randn(rows, 48, generator=g)
    gate_up = torch.randn(rows, 160, generator=g)
    calls = []
    _spy(monkeypatch, calls, lambda name, args: (name, *args[5:]))   # (name, residual, silu)
    got = linear.linear_add(o_proj, x, residual)
    torch.testing.assert_close(got, residual + F.linear(x, w_o), rtol=1e-5, atol=1e-5)
    gate, up = gate_up.chunk(2, dim=-1)
    got = linear.silu_linear_add(down, gate_up, residual)
    torch.testing.assert_close(got, residual + F.linear(F.silu(gate) * up, w_down, b_down), rtol=1e-5, atol=1e-5)
    assert [c[0] for c in calls] == ["linear_packed"] * 2 and calls[0][1] is residual and calls[1][1] is residual
    assert [c[2] for c in calls] == [False, True], "one call each, silu folded into down's"


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


def test_the_layer_after_attention_is_one_call_equal_to_the_three_fused_calls(monkeypatch):
    g = torch.Generator().manual_seed(5)
    d, inter = 64, 96
    o_proj, gate_up, down = (PackedLinear(torch.randn(o, i, generator=g) / 8)
                             for i, o in ((d, d), (d, 2 * inter), (inter, d)))
    o, x = torch.randn(3, d, generator=g), torch.randn(3, d, generator=g)
    x1 = linear.linear_add(o_proj, o, x)
    expected = linear.silu_linear_add(down, linear.rms_linear(gate_up, x1, torch.tensor(0.05), 0.05), x1)
    calls = []
    _spy(monkeypatch, calls, lambda name, args: name)
    assert torch.equal(linear.mlp_block(o_proj, gate_up, down, o, x, 0.05), expected)
    assert calls == ["mlp_block_packed"]
    o_proj.bias = torch.zeros(d)                                # a bias: the caller runs the three calls
    assert linear.mlp_block(o_proj, gate_up, down, o, x, 0.05) is None
