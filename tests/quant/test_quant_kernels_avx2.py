"""The quantized-Linear kernel as an AVX2-only machine builds it (no AVX-512, no VNNI).

Machines of the pool differ: on one with AVX-512 the `-march=native` build never compiles the AVX2
branches, so this builds the same sources for Haswell (AVX2 + FMA) and checks both of its paths against
the reference: the tiled kernel (quant_avx2.h: int8 activations, vpmaddubsw) and register dequantization.
"""

from __future__ import annotations

import pytest
import torch

from flint.engine import kernels
from flint.engine.quant import modules
from flint.engine.quant.formats import quantize_int4, quantize_int8


@pytest.fixture(scope="module")
def avx2_kernel():
    if "avx2" not in kernels.cpu_flags():
        pytest.skip("this CPU cannot run an AVX2 build")
    return kernels.load("flint_quant_linear_avx2", kernels.KERNELS["flint_quant_linear"],
                        ["-march=haswell", "-mtune=generic"])


@pytest.fixture(params=["tiled", "fp32-dequant"])
def avx2_path(request, avx2_kernel, monkeypatch):
    monkeypatch.setattr(modules, "_kernel", avx2_kernel)
    monkeypatch.setattr(modules, "_kernel_tried", True)
    avx2_kernel.use_tiled(request.param == "tiled")
    yield request.param
    avx2_kernel.use_tiled(True)


def test_the_avx2_build_tiles_with_avx2_not_vnni(avx2_kernel):
    assert avx2_kernel.tiled_isa == "avx2" and avx2_kernel.has_tiled and not avx2_kernel.has_vnni
    assert avx2_kernel.vnni_peak_per_s(1000) == 0.0


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 128)])
@pytest.mark.parametrize("m,k,n", [(1, 512, 1024), (3, 100, 77), (9, 33, 7), (16, 256, 9), (40, 200, 33)])
def test_quant_linear_on_the_avx2_build_matches_the_reference(avx2_path, bits, group, m, k, n):
    """QuantLinear as it runs there: the tiled kernel for every row count, or register dequantization up to
    SMALL_M_ROWS rows and dequantize + mm above."""
    g = torch.Generator().manual_seed(m * 100 + n)
    raw = torch.randn(n, k, generator=g)
    w = quantize_int8(raw) if bits == 8 else quantize_int4(raw, group)
    x, bias, scale = torch.randn(m, k, generator=g), torch.randn(n, generator=g), torch.rand(k, generator=g) + 0.5
    layer = modules.QuantLinear(w, bias, input_scale=scale)
    assert (layer._op is not None) == (avx2_path == "tiled")
    got = layer(x)
    ref = (x * scale) @ w.dequantize().T + bias
    if avx2_path == "tiled":   # activations rounded to int8 per block
        assert (got - ref).norm() <= 0.015 * (ref - bias).norm()
    else:
        torch.testing.assert_close(got, ref, atol=1e-4 * k**0.5, rtol=1e-4)
    torch.testing.assert_close(modules.dequantize(w), w.dequantize())


def test_int8_codes_at_the_ends_of_the_range_do_not_saturate(avx2_path):
    """vpmaddubsw saturates its 16-bit pair sums: the int8 tiles' codes + 128 against activations of 127 would
    reach 2 x 255 x 127. Weights of +-127 and activations at their block maximum give the exact dot product
    (up to the activations' rounding, none here: every activation is its block's maximum)."""
    n, k = 64, 256
    w = quantize_int8(torch.where(torch.arange(k) % 3 == 0, -1.0, 1.0).expand(n, k).contiguous())
    x = torch.full((2, k), 2.0)
    got = modules.QuantLinear(w)(x)
    torch.testing.assert_close(got, x @ w.dequantize().T, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 128)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_a_row_gets_the_same_bits_whatever_rows_share_the_call_on_avx2(avx2_path, bits, group, with_bias):
    """1, 2, 4 and 8 rows per pass (the tiled kernel's passes on AVX2) give a row the same bits."""
    g = torch.Generator().manual_seed(31)
    raw = torch.randn(200, 256, generator=g)
    w = quantize_int8(raw) if bits == 8 else quantize_int4(raw, group)
    x, bias = torch.randn(16, 256, generator=g), torch.randn(200, generator=g) if with_bias else None
    layer = modules.QuantLinear(w, bias)
    whole = layer(x)
    for rows in (1, 2, 3, 4, 8):
        parts = torch.cat([layer(x[i: i + rows].contiguous()) for i in range(0, 16, rows)])
        assert torch.equal(parts, whole), f"{rows} rows per call"
