"""The quantized-Linear kernel as an AVX2-only machine builds it (no AVX-512, no VNNI).

Machines of the pool differ: on one with AVX-512 the `-march=native` build never compiles the AVX2
branches, so this builds the same sources for Haswell (AVX2 + FMA) and checks them against the reference.
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


def test_the_avx2_build_has_no_vnni_path(avx2_kernel):
    assert not avx2_kernel.has_vnni and not avx2_kernel.vnni_on()


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32), (4, 128)])
@pytest.mark.parametrize("m,k,n", [(1, 512, 1024), (3, 100, 77), (16, 256, 9), (40, 200, 33)])
def test_quant_linear_on_the_avx2_build_matches_the_reference(avx2_kernel, monkeypatch, bits, group, m, k, n):
    """QuantLinear as it runs there: register dequantization up to SMALL_M_ROWS rows, dequantize + mm above."""
    monkeypatch.setattr(modules, "_kernel", avx2_kernel)
    monkeypatch.setattr(modules, "_kernel_tried", True)
    g = torch.Generator().manual_seed(m * 100 + n)
    raw = torch.randn(n, k, generator=g)
    w = quantize_int8(raw) if bits == 8 else quantize_int4(raw, group)
    x, bias, scale = torch.randn(m, k, generator=g), torch.randn(n, generator=g), torch.rand(k, generator=g) + 0.5
    got = modules.QuantLinear(w, bias, input_scale=scale)(x)
    ref = (x * scale) @ w.dequantize().T + bias
    torch.testing.assert_close(got, ref, atol=1e-4 * k**0.5, rtol=1e-4)
    torch.testing.assert_close(modules.dequantize(w), w.dequantize())
