"""`Linear`: the model's nn.Linear, with few-row float32 CPU products on flint's native kernel.

Decode (one row per sequence) and speculative verification (k + 1 rows) multiply a handful of rows
by every weight matrix; torch's F.linear (MKL on CPU) reaches about half of what the CPU can read
there. `flint/engine/kernels/skinny_f32.cpp` reads each weight row once for up to `MAX_ROWS` rows.
Everything else (more rows: prefill; other dtypes and devices; inside torch.compile) is F.linear.
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

MAX_ROWS = 8


@functools.cache
def _kernel():
    if os.environ.get("FLINT_NATIVE_LINEAR", "1") == "0":
        return None
    from flint.engine import kernels

    try:
        return kernels.load("skinny_f32", ["skinny_f32.cpp"])
    except kernels.KernelUnavailable:
        return None


def native_available() -> bool:
    """True when few-row float32 CPU products run flint's kernel (building it now if needed)."""
    return _kernel() is not None


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.dim() == 2 and x.shape[0] <= MAX_ROWS and x.dtype == torch.float32 and x.device.type == "cpu"
                and self.weight.dtype == torch.float32 and not torch.compiler.is_compiling()):
            kernel = _kernel()
            if kernel is not None:
                return kernel.linear_f32(x.contiguous(), self.weight.contiguous(), self.bias)
        return F.linear(x, self.weight, self.bias)
