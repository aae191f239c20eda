"""flint's computing kernels run without the GIL, so other Python threads run while a step computes.

The engine steps in its own thread and the event loop that streams tokens to clients runs in another
(`flint.engine.async_engine`); the loop runs while a step computes only if the step's native calls let go of
the GIL. Each test runs one long call of a kernel (the fp32 Linear, the quantized tiled Linear, paged
attention) while a Python thread spins, and checks that the thread was never kept out for half the call: a
kernel that holds the GIL keeps it out for the whole kernel.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

from flint.engine import kernels
from flint.engine.paged_attention import PagedAttention, native_kernel
from flint.engine.quant import modules as quant_modules
from flint.engine.quant.formats import quantize_int4, quantize_int8


def _longest_stall(call) -> float:
    """Run call() while another thread spins: the longest stretch of the call in which that thread did not run,
    as a share of the call's time (1.0: it never ran during the call)."""
    ticks: list[float] = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(time.perf_counter())

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        time.sleep(0.02)                      # the spinner is running and wants the GIL
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        thread.join()
    assert t1 - t0 > 0.01, f"the call took {1e3 * (t1 - t0):.1f} ms: too short to tell"
    points = [t0, *(t for t in ticks if t0 < t < t1), t1]
    return max(b - a for a, b in zip(points, points[1:])) / (t1 - t0)


def test_packed_fp32_linear_runs_without_the_gil():
    kernel = kernels.load("skinny_f32")
    w = torch.randn(2048, 2048)
    packed = kernel.pack_f32(w)
    x = torch.randn(2048, 2048)
    assert _longest_stall(lambda: kernel.linear_packed(x, packed, 2048, None)) < 0.5


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_tiled_linear_runs_without_the_gil(bits):
    kernel = quant_modules.kernel()
    if kernel is None or not kernel.tiled_on():
        pytest.skip("no tiled quantized kernel on this CPU (neither AVX2 nor AVX512-VNNI)")
    w = torch.randn(4096, 4096)
    linear = quant_modules.QuantLinear(quantize_int8(w) if bits == 8 else quantize_int4(w, 128))
    x = torch.randn(1024, 4096)
    assert _longest_stall(lambda: linear(x)) < 0.5


def test_paged_attention_runs_without_the_gil():
    assert native_kernel() is not None, "the native paged attention kernel must build on the test machine"
    heads, kv, d, context, new, seqs = 8, 4, 64, 16384, 16, 64
    attn = PagedAttention(torch.zeros(1, context, kv, d), torch.zeros(1, context, kv, d), num_heads=heads,
                          native=True)
    # 64 sequences extending the same 16K cached slots by 16 tokens each: the native kernel reads the cache in place
    attn.begin_step([(torch.arange(context), context - new, new)] * seqs)
    q = torch.randn(seqs * new, heads, d)
    k, v = torch.randn(seqs * new, kv, d), torch.randn(seqs * new, kv, d)
    assert _longest_stall(lambda: attn(0, q, k, v)) < 0.5
