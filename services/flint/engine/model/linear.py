"""The model's Linear and the decode step's fused calls; `unit_rms`, `silu_mul`, `rms_norm`, `argmax_rows`.

`Linear` is what the model is built with (an nn.Linear running F.linear). After loading, the loader turns
every float32 CPU Linear into a `PackedLinear` (`flint.engine.model.packed`: weights in 64-column panels,
`flint/engine/kernels/skinny_f32.cpp`), the same way quantization turns them into `QuantLinear`s. The functions
below run a decoder layer's calls through whatever the Linear is: `rms_linear` folds unit_rms into the Linear
that follows it (one call for norm + qkv, one for norm + gate_up), `linear_add` and `silu_linear_add` fold the
residual adds (and the MLP's silu_mul) into o_proj and down, `mlp_block` and `decode_layer` run the layer after
attention or the whole layer in one native call. A Linear without those methods (another device or dtype, no
C++ compiler) runs the plain torch ops. `unit_rms` (3 torch ops), `silu_mul` (3) and `rms_norm` (the final norm)
are one native call each for a few float32 rows; `argmax_rows` (greedy choice) is numpy's vectorised argmax
over the logits' memory. The kernel is built on first use and cached per machine (`flint.engine.kernels`);
without a C++ compiler the model runs torch ops and says so once in the log. `FLINT_NATIVE_LINEAR=0` turns it
off (for A/B measurements).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

# Rows up to which unit_rms, silu_mul and the final norm run on the kernel (decode, verification, batched decode);
# more rows (prefill) run the torch ops, whose per-call cost is then small against the work.
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
    """True when float32 CPU Linears run flint's kernel (building it now if needed)."""
    return _kernel() is not None


def _few_rows(x: torch.Tensor):
    """The native kernels if `x` is a few float32 CPU rows outside torch.compile, else None."""
    if (x.dim() == 2 and x.shape[0] <= MAX_ROWS and x.dtype == torch.float32 and x.device.type == "cpu"
            and not torch.compiler.is_compiling()):
        return _kernel()
    return None


class Linear(nn.Linear):
    """nn.Linear as the model is built; the loader replaces float32 CPU ones by `PackedLinear`s."""


def rms_linear(linear: nn.Module, x: torch.Tensor, floor: torch.Tensor, floor_value: float) -> torch.Tensor:
    """linear(unit_rms(x)): one fused call when the Linear's kernel takes x (`PackedLinear`, quantized
    `QuantLinear`), the two ops otherwise."""
    fused = getattr(linear, "forward_unit_rms", None)
    y = fused(x, floor_value) if fused is not None else None
    return y if y is not None else linear(unit_rms(x, floor, floor_value))


def decode_layer(layer: nn.Module, x: torch.Tensor, rotation: torch.Tensor, attn, layer_idx: int) -> torch.Tensor | None:
    """A whole decoder layer (norm + qkv, rotary + KV write + attention, o_proj + residual, norm + gate_up,
    silu + down + residual) in ONE native call, when the step's sequences all attend in place
    (`PagedAttention.in_place_plan`) and the layer's four Linears are on the packed fp32 or the tiled quantized
    kernel; None otherwise (the layer then runs its calls one by one)."""
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
