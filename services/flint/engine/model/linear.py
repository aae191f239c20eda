"""`Linear`, `unit_rms`, `silu_mul`: the decode step's few-row float32 CPU work on flint's native kernels.

Decode (one row per sequence) and speculative verification (k + 1 rows) multiply a handful of rows
by every weight matrix; torch's F.linear (MKL on CPU) reaches about half of what the CPU can read
there. `flint/engine/kernels/skinny_f32.cpp` reads each weight row once for up to `MAX_ROWS` rows.
`unit_rms` (3 torch ops) and `silu_mul` (3) are one call each there, and `rms_linear` folds unit_rms
into the Linear that follows it (one call for norm + qkv, one for norm + gate_up). Everything else (more rows:
prefill; other dtypes and devices; inside torch.compile) runs the plain torch ops.
The kernel is built on first use and cached per machine (`flint.engine.kernels`); without a C++
compiler the model runs F.linear and says so once in the log. `FLINT_NATIVE_LINEAR=0` turns it off
(for A/B measurements).

Being an nn.Linear subclass, it is what a post-load pass that replaces Linears (quantization) sees.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

# Rows up to which the kernel beats F.linear. Measured on the 2-core EPYC (2 threads, the 17 matrices of
# the benchmark model, 83 MB, streamed from DRAM), ms per pass, F.linear vs kernel: 1 row 7.7 vs 2.0,
# 16 rows 14.9 vs 9.3, 24 rows 16.3 vs 12.6, 48 rows 24.2 vs 22.7. 16 decode streams used to take F.linear.
MAX_ROWS = 32


@functools.cache
def _kernel():
    if os.environ.get("FLINT_NATIVE_LINEAR", "1") == "0":
        return None
    from flint.engine import kernels

    try:
        return kernels.load("skinny_f32")
    except kernels.KernelUnavailable:
        return None


def native_available() -> bool:
    """True when few-row float32 CPU products run flint's kernel (building it now if needed)."""
    return _kernel() is not None


def _few_rows(x: torch.Tensor):
    """The native kernels if `x` is a few float32 CPU rows outside torch.compile, else None."""
    if (x.dim() == 2 and x.shape[0] <= MAX_ROWS and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.compiler.is_compiling()):
        return _kernel()
    return None


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = _few_rows(x)
        if kernel is not None and self.weight.dtype == torch.float32:
            return kernel.linear_f32(x.contiguous(), self.weight.contiguous(), self.bias)
        return F.linear(x, self.weight, self.bias)

    def forward_unit_rms(self, x: torch.Tensor, floor_value: float) -> torch.Tensor | None:
        """self(unit_rms(x)) in one kernel call, or None where the kernel does not take x."""
        kernel = _few_rows(x)
        if kernel is not None and self.weight.dtype == torch.float32:
            return kernel.linear_f32(x.contiguous(), self.weight.contiguous(), self.bias, floor_value)
        return None


def rms_linear(linear: nn.Module, x: torch.Tensor, floor: torch.Tensor, floor_value: float) -> torch.Tensor:
    """linear(unit_rms(x)): one fused call when the Linear's kernel takes x (fp32 `Linear`, quantized
    `QuantLinear`), the two ops otherwise."""
    fused = getattr(linear, "forward_unit_rms", None)
    y = fused(x, floor_value) if fused is not None else None
    return y if y is not None else linear(unit_rms(x, floor, floor_value))


def unit_rms(x: torch.Tensor, floor: torch.Tensor, floor_value: float) -> torch.Tensor:
    """x [T, d] / hypot(|x|, floor): RMSNorm without its weight and sqrt(d) (folded into the next Linear).

    `floor` is the 0-dim tensor sqrt(d * eps) (graph-friendly), `floor_value` the same as a float."""
    kernel = _few_rows(x)
    if kernel is not None:
        return kernel.unit_rms_f32(x.contiguous(), floor_value)
    return x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), floor)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """gate_up [T, 2I] -> silu(gate) * up [T, I]."""
    kernel = _few_rows(gate_up)
    if kernel is not None:
        return kernel.silu_mul_f32(gate_up.contiguous())
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up
