"""`Linear`, `unit_rms`, `silu_mul`: the decode step's few-row float32 CPU work on flint's native kernels.

Decode (one row per sequence) and speculative verification (k + 1 rows) multiply a handful of rows
by every weight matrix; torch's F.linear (MKL on CPU) reaches about half of what the CPU can read
there. `flint/engine/kernels/skinny_f32.cpp` reads each weight row once for up to `MAX_ROWS` rows.
`unit_rms` (3 torch ops) and `silu_mul` (3) are one call each there, and `rms_linear` folds unit_rms
into the Linear that follows it (one call for norm + qkv, one for norm + gate_up); `linear_add` and
`silu_linear_add` fold the residual adds (and the MLP's silu_mul) into o_proj and down, so a decode layer
is four Linear calls and one attention call. `rms_norm` (the final norm) is one native call too;
`argmax_rows` (greedy choice) is numpy's vectorised argmax over the logits' memory. Everything else (more rows:
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
        return self.forward_fused(x, floor_value)

    def forward_fused(self, x: torch.Tensor, floor_value: float = -1.0, residual: torch.Tensor | None = None,
                      silu: bool = False) -> torch.Tensor | None:
        """residual + self(f(x)) in one kernel call, f being unit_rms (floor_value >= 0) or silu_mul (silu, x the
        [T, 2I] gate_up), or None where the kernel does not take x."""
        kernel = _few_rows(x)
        if kernel is not None and self.weight.dtype == torch.float32:
            return kernel.linear_f32(x.contiguous(), self.weight.contiguous(), self.bias, floor_value, residual, silu)
        return None

    def decode_layer(self, layer: nn.Module, x: torch.Tensor, rotation: torch.Tensor, args: tuple) -> torch.Tensor | None:
        """`decode_layer` with self as the layer's qkv: one kernel call when its o_proj, gate_up and down are
        bias-free fp32 `Linear`s (qkv may have a bias: Qwen2)."""
        kernel = _few_rows(x)
        mods = layer._modules
        rest = (mods["o_proj"], mods["gate_up"], mods["down"])
        if (kernel is None or self.weight.dtype != torch.float32
                or not all(isinstance(m, Linear) and m.bias is None and m.weight.dtype == torch.float32 for m in rest)):
            return None
        return kernel.decode_layer_f32(x.contiguous(), self.weight.contiguous(), self.bias,
                                       *(m.weight.contiguous() for m in rest), layer.floor_value, rotation, *args)

    def mlp_block(self, gate_up: nn.Module, down: nn.Module, o: torch.Tensor, x: torch.Tensor,
                  floor_value: float) -> torch.Tensor | None:
        """`mlp_block` with self as o_proj: one kernel call when all three are bias-free fp32 `Linear`s."""
        kernel = _few_rows(o)
        layers = (self, gate_up, down)
        if (kernel is None or not all(isinstance(m, Linear) and m.bias is None and m.weight.dtype == torch.float32
                                      for m in layers) or x.dtype != torch.float32):
            return None
        return kernel.mlp_block_f32(o.contiguous(), x.contiguous(), *(m.weight.contiguous() for m in layers),
                                    floor_value)


def rms_linear(linear: nn.Module, x: torch.Tensor, floor: torch.Tensor, floor_value: float) -> torch.Tensor:
    """linear(unit_rms(x)): one fused call when the Linear's kernel takes x (fp32 `Linear`, quantized
    `QuantLinear`), the two ops otherwise."""
    fused = getattr(linear, "forward_unit_rms", None)
    y = fused(x, floor_value) if fused is not None else None
    return y if y is not None else linear(unit_rms(x, floor, floor_value))


def decode_layer(layer: nn.Module, x: torch.Tensor, rotation: torch.Tensor, attn, layer_idx: int) -> torch.Tensor | None:
    """A whole decoder layer (norm + qkv, rotary + KV write + attention, o_proj + residual, norm + gate_up,
    silu + down + residual) in ONE native call, when the step's sequences all attend in place
    (`PagedAttention.in_place_plan`) and the layer's four Linears are on the fp32 or the tiled quantized kernel; None
    otherwise (the layer then runs its calls one by one)."""
    fused = getattr(layer._modules["qkv"], "decode_layer", None)   # (_modules: nn.Module.__getattr__ is ~0.7 us)
    plan = getattr(attn, "in_place_plan", None)
    if fused is None or plan is None or rotation.dtype != torch.float32:
        return None
    args = plan(layer_idx)
    return fused(layer, x, rotation, args) if args is not None else None


def mlp_block(o_proj: nn.Module, gate_up: nn.Module, down: nn.Module, o: torch.Tensor, x: torch.Tensor,
              floor_value: float) -> torch.Tensor | None:
    """A decoder layer after attention, x1 = x + o_proj(o) then x1 + down(silu_mul(gate_up(unit_rms(x1)))), in
    ONE native call where the three Linears' kernels take it (their weight streams then follow each other
    with no Python between them); None otherwise (the caller runs linear_add, rms_linear, silu_linear_add)."""
    block = getattr(o_proj, "mlp_block", None)
    return block(gate_up, down, o, x, floor_value) if block is not None else None


def linear_add(linear: nn.Module, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + linear(x): one call where the Linear's kernel takes x (the residual add after o_proj)."""
    fused = getattr(linear, "forward_fused", None)
    y = fused(x, -1.0, residual) if fused is not None else None
    return y if y is not None else residual + linear(x)


def silu_linear_add(linear: nn.Module, gate_up: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + linear(silu_mul(gate_up)): one call where the Linear's kernel takes it (the MLP's down)."""
    fused = getattr(linear, "forward_fused", None)
    y = fused(gate_up, -1.0, residual, True) if fused is not None else None
    return y if y is not None else residual + linear(silu_mul(gate_up))


def rms_norm(x: torch.Tensor, weight_times_sqrt_d: torch.Tensor, weight: torch.Tensor, eps: float,
             floor_value: float) -> torch.Tensor:
    """RMSNorm of x [T, d]: one native call for a few float32 rows (given weight * sqrt(d) and the floor
    sqrt(d * eps)), else F.rms_norm (whose CPU kernel cost ~40 us for one row of 512 in a decode step)."""
    kernel = _few_rows(x)
    if kernel is not None and weight_times_sqrt_d.dtype == torch.float32:
        return kernel.unit_rms_f32(x.contiguous(), floor_value, weight_times_sqrt_d)
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits [N, V] -> int64 [N], the first index of each row's maximum (greedy decoding).

    float32 CPU rows take numpy's argmax over the shared memory (SIMD; first index of the maximum, as
    torch's): on the benchmark's 16,000-token vocabulary, 1 thread, 2.0 vs 2.7 us for one row and 32 vs
    98 us for 16 rows against the native kernel's scalar loop (loadtests/results/host-step-20261130.md).
    A row holding NaN gives the NaN's index here (torch's answer); the native kernel gave index 0."""
    if logits.dim() == 2 and logits.dtype == torch.float32 and logits.device.type == "cpu" and logits.shape[-1] > 0:
        return torch.from_numpy(logits.numpy().argmax(axis=1))
    return logits.argmax(dim=-1)


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
