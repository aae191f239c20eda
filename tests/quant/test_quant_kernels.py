"""The native quantized-Linear kernels against the PyTorch reference of the formats."""

from __future__ import annotations

import pytest
import torch

from flint.engine.quant import modules
from flint.engine.quant.formats import QuantWeight, pack_int4, quantize_int4, quantize_int8, unpack_int4


@pytest.fixture(scope="module")
def kernel():
    k = modules.kernel()
    assert k is not None, "the native kernel must build on a machine with g++ (the CI machines have it)"
    return k


def weights(n: int, k: int, bits: int, group: int, seed: int) -> QuantWeight:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return quantize_int8(w) if bits == 8 else quantize_int4(w, group)


SHAPES = [  # (M, K, N): decode, verification, odd sizes that need padding, one output channel
    (1, 512, 1024), (2, 64, 48), (3, 100, 77), (5, 1536, 512), (8, 96, 130), (9, 33, 7), (16, 256, 1), (13, 7, 300),
]


@pytest.fixture(params=["fp32-dequant", "tiled"])
def kernel_path(request, kernel):
    """Both small-M paths: weights dequantized in registers (fp32 activations), and the tiled kernel (int8
    activations; AVX512-VNNI, or AVX2 as this CPU has it: test_quant_kernels_avx2.py builds the AVX2 one anywhere)."""
    if request.param == "tiled" and not kernel.has_tiled:
        pytest.skip("this CPU has neither AVX2 nor AVX512-VNNI (the fp32-dequant case covers its kernel)")
    kernel.use_tiled(request.param == "tiled")
    yield request.param
    kernel.use_tiled(True)


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 64), (4, 128)])
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_small_m_kernel_matches_reference(kernel_path, bits, group, m, k, n):
    w = weights(n, k, bits, group, seed=m * 1000 + k + n)
    g = torch.Generator().manual_seed(m)
    x, bias, scale = torch.randn(m, k, generator=g), torch.randn(n, generator=g), torch.rand(k, generator=g) + 0.5
    ref = (x * scale) @ w.dequantize().T + bias
    got = modules.QuantLinear(w, bias, input_scale=scale)(x)
    if kernel_path == "tiled":   # activations rounded to int8 per block: ~0.4% of |x| per element
        assert (got - ref).norm() <= 0.015 * (ref - bias).norm()
    else:
        torch.testing.assert_close(got, ref, atol=1e-4 * k**0.5, rtol=1e-4)


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 64)])
def test_large_m_and_other_dtypes(kernel_path, bits, group):
    """More rows than SMALL_M_ROWS: the tiled kernel (prefill too), dequantize + torch.mm otherwise."""
    w = weights(40, 200, bits, group, seed=3)
    x = torch.randn(2, 17, 200)                               # 34 rows > SMALL_M_ROWS, 3-D input
    ref = x @ w.dequantize().T
    got = modules.QuantLinear(w)(x)
    if kernel_path == "tiled":
        assert (got - ref).norm() <= 0.015 * ref.norm()
        big = torch.randn(300, 200)
        assert (modules.QuantLinear(w)(big) - big @ w.dequantize().T).norm() <= 0.015 * (big @ w.dequantize().T).norm()
    else:
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    got = modules.QuantLinear(w)(x[0, :3].bfloat16())
    assert got.dtype == torch.bfloat16
    ref = x[0, :3].bfloat16().float() @ w.dequantize().T
    assert (got.float() - ref).norm() <= 0.015 * ref.norm()      # bf16 output, int8 activations when tiled


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 128)])
def test_kernel_dequantize_matches_reference(kernel, bits, group):
    w = weights(33, 300, bits, group, seed=5)
    torch.testing.assert_close(modules.dequantize(w), w.dequantize(), atol=1e-6, rtol=1e-6)  # fma vs mul+add


def test_without_the_kernel_the_pytorch_reference_gives_the_same_result(kernel, monkeypatch):
    w = weights(24, 96, 4, 32, seed=6)
    x = torch.randn(3, 96)
    kernel.use_tiled(False)
    try:
        with_kernel = modules.QuantLinear(w)(x)
    finally:
        kernel.use_tiled(True)
    monkeypatch.setattr(modules, "_kernel", None)
    monkeypatch.setattr(modules, "_kernel_tried", True)
    torch.testing.assert_close(modules.QuantLinear(w)(x), with_kernel, atol=1e-4, rtol=1e-4)


def test_int4_pack_round_trips_and_puts_column_j_plus_16_in_the_high_nibble():
    q = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.shape == (3, 32)
    assert torch.equal(unpack_int4(packed), q)
    assert int(packed[1, 16 + 5]) == int(q[1, 32 + 5]) | int(q[1, 48 + 5]) << 4


def test_quantization_error_is_within_the_format_step():
    w = torch.randn(16, 256)
    int8, int4 = quantize_int8(w), quantize_int4(w, 32)
    assert (int8.dequantize() - w).abs().max() <= w.abs().amax() / 127 / 2 + 1e-6
    groups = w.view(16, 8, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15
    assert ((int4.dequantize() - w).view(16, 8, 32).abs() <= step[..., None] / 2 + 1e-5).all()


def test_rows_and_cat_fuse_along_output_channels():
    a, b = weights(8, 64, 4, 32, seed=7), weights(5, 64, 4, 32, seed=8)
    fused = QuantWeight.cat([a, b])
    torch.testing.assert_close(fused.dequantize(), torch.cat([a.dequantize(), b.dequantize()]))
    perm = torch.tensor([4, 0, 12, 3])
    torch.testing.assert_close(fused.rows(perm).dequantize(), fused.dequantize()[perm])
    with pytest.raises(Exception, match="different formats"):
        QuantWeight.cat([a, weights(5, 64, 4, 64, seed=9)])


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 128)])
def test_a_row_gets_the_same_bits_whatever_rows_share_the_call(kernel_path, bits, group):
    """Speculative verification (many rows) must reproduce plain decoding (one row) exactly."""
    w = weights(70, 192, bits, group, seed=11)
    # tiled: 45 rows, so its 16-row pass runs twice (the second group of 16 rows has its own place in the
    # interleaved activations) and its 8-, 4- and 1-row passes once; the other kernel takes at most SMALL_M_ROWS
    rows = 45 if kernel_path == "tiled" else 13
    x = torch.randn(rows, 192)
    lin = modules.QuantLinear(w)
    together = lin(x)
    for i in sorted({0, 5, 12, 20, rows - 1} & set(range(rows))):
        assert torch.equal(lin(x[i: i + 1]), together[i: i + 1])
    assert torch.equal(lin(x[3:9]), together[3:9])
    if rows > 16:   # 17 rows: a 16-row pass and a 1-row one
        assert torch.equal(lin(x[rows - 17:]), together[rows - 17:])
    if rows > 32:   # rows 16-31 alone: the first group of 16 of a call
        assert torch.equal(lin(x[16:32]), together[16:32])


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 64)])
def test_rms_linear_on_a_quant_linear_folds_the_norm_into_the_activation_scales(kernel_path, bits, group):
    from flint.engine.model.linear import rms_linear

    w = weights(48, 160, bits, group, seed=13)
    g = torch.Generator().manual_seed(13)
    x, scale = torch.randn(3, 160, generator=g) * 4, torch.rand(160, generator=g) + 0.5
    lin = modules.QuantLinear(w, torch.randn(48, generator=g), input_scale=scale)
    floor = torch.tensor(0.3)
    normed = x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), floor)
    got = rms_linear(lin, x, floor, 0.3)
    ref = (normed * scale) @ w.dequantize().T + lin.bias
    assert (got - ref).norm() <= 0.015 * (ref - lin.bias).norm()
    if kernel_path == "tiled":   # the fused call: same int8 codes, row scale folded in
        torch.testing.assert_close(got, lin(normed), rtol=1e-5, atol=1e-5)
        assert lin.forward_unit_rms(x, 0.3) is not None
    else:
        assert lin.forward_unit_rms(x, 0.3) is None


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 64)])
def test_residual_add_and_silu_fold_into_the_quant_linear_call(kernel_path, bits, group):
    import torch.nn.functional as F

    from flint.engine.model.linear import linear_add, silu_linear_add

    w = weights(48, 160, bits, group, seed=17)
    g = torch.Generator().manual_seed(17)
    lin = modules.QuantLinear(w, torch.randn(48, generator=g))
    x, gate_up, residual = torch.randn(3, 160, generator=g), torch.randn(3, 320, generator=g), torch.randn(3, 48, generator=g)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(linear_add(lin, x, residual), residual + lin(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(silu_linear_add(lin, gate_up, residual), residual + lin(F.silu(gate) * up),
                               rtol=1e-5, atol=1e-5)
    fused = lin.forward_fused(gate_up, -1.0, residual, True)
    assert (fused is not None) == (kernel_path == "tiled"), "one tiled call on the tiled path, the ops elsewhere"


def test_the_layer_after_attention_is_one_tiled_call(kernel_path):
    from flint.engine.model.linear import linear_add, mlp_block, rms_linear, silu_linear_add

    g = torch.Generator().manual_seed(19)
    o_proj, gate_up, down = (modules.QuantLinear(weights(n, k, 4, 32, seed=n + k)) for n, k in
                             ((64, 64), (192, 64), (64, 96)))
    o, x = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g)
    x1 = linear_add(o_proj, o, x)
    expected = silu_linear_add(down, rms_linear(gate_up, x1, torch.tensor(0.1), 0.1), x1)
    got = mlp_block(o_proj, gate_up, down, o, x, 0.1)
    if kernel_path == "tiled":
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    else:
        assert got is None, "without the tiled path the caller runs the three calls"


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 128)])
def test_embedding_rows_match_the_reference(kernel, bits, group):
    w = weights(50, 100, bits, group, seed=12)   # K = 100: padded columns are not returned
    ids = torch.tensor([[3, 0], [49, 3]])
    got = modules.QuantEmbedding(w, torch.float32)(ids)
    assert got.shape == (2, 2, 100)
    torch.testing.assert_close(got, w.dequantize()[ids], atol=1e-6, rtol=1e-6)
    with pytest.raises(RuntimeError, match="outside the vocabulary"):
        modules.QuantEmbedding(w, torch.float32)(torch.tensor([50]))


def test_the_tiled_copy_is_made_at_load_not_in_the_first_request(kernel):
    if not kernel.has_tiled:
        pytest.skip("this CPU has neither AVX2 nor AVX512-VNNI: no tiled copy")
    lin = modules.QuantLinear(weights(40, 64, 4, 32, seed=14))
    assert lin._op is not None and lin._tiled is not None


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 128)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_a_row_gets_the_same_bits_whatever_rows_share_the_call(kernel_path, bits, group, with_bias):
    """Decode (1 row), verification (a few) and batched decode (8, 16 rows: each its own pass of the kernel) give
    a row the same bits: speculative verification reproduces plain decoding, and a step's rows may be split
    between threads. (A biased Linear broke this once: the compiler fused the bias add into the last product in
    some of the passes only.)"""
    w = weights(200, 256, bits, group, seed=9)
    g = torch.Generator().manual_seed(9)
    x, bias = torch.randn(16, 256, generator=g), torch.randn(200, generator=g) if with_bias else None
    layer = modules.QuantLinear(w, bias)
    whole = layer(x)
    for rows in (1, 2, 3, 4, 8):
        parts = torch.cat([layer(x[i : i + rows].contiguous()) for i in range(0, 16, rows)])
        assert torch.equal(parts, whole), f"{rows} rows per call"


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 128)])
def test_a_many_row_layer_call_gives_each_row_the_bits_of_its_own_call(kernel, bits, group):
    """The tiled call of 16 and more rows with the folded norm (rms_linear), silu and the residual add (a decoder
    layer's MLP in a 24-stream step) gives each row the bits of its one-row call. (The other kernel takes a few
    rows only; more go to torch.mm.)"""
    from flint.engine.model.linear import rms_linear, silu_linear_add

    if not kernel.has_tiled:
        pytest.skip("this CPU has neither AVX2 nor AVX512-VNNI: no tiled kernel")
    g = torch.Generator().manual_seed(23)
    up = modules.QuantLinear(weights(2 * 640, 512, bits, group, seed=23), input_scale=torch.rand(512, generator=g) + 0.5)
    down = modules.QuantLinear(weights(512, 640, bits, group, seed=24))
    x = torch.randn(24, 512, generator=g) * 3
    floor = torch.tensor(0.2)

    def layer(rows: torch.Tensor) -> torch.Tensor:
        return silu_linear_add(down, rms_linear(up, rows, floor, 0.2), rows)

    whole = layer(x)
    for i in (0, 7, 15, 16, 23):
        assert torch.equal(layer(x[i : i + 1]), whole[i : i + 1]), f"row {i}"
    assert torch.equal(layer(x[:16]), whole[:16])
    assert torch.equal(layer(x[8:24]), whole[8:24])
