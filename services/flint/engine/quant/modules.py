"""`QuantLinear` and `QuantEmbedding`: drop-in modules over a `QuantWeight`.

QuantLinear.forward(x [..., K]) -> [..., N] in x's dtype:
- with AVX512-VNNI or AVX2 + FMA, any number of rows (decode, speculative verification and prefill): the
  tiled kernel (kernels/quant_vnni.cpp; quant_avx2.h on AVX2) with int8 activations. Measured against
  dequantize + torch.mm on the 3072x512 gate_up, 1 thread, VNNI: 6x faster at 16-64 rows, 4x at 128 and 512
  (the VNNI dot product does 64 multiply-adds per instruction, an fp32 FMA 16, and nothing writes an fp32
  weight copy); AVX2 (Zen 3): one pass over the benchmark model's int4 Linears 0.46 against 3.4 ms at one
  row, 7.3 against 13.6 ms at 16 (README, quantization);
- otherwise up to `SMALL_M_ROWS` rows: the native kernel (kernels/quant_linear.cpp) dequantizes each
  weight vector in registers once for all rows; more rows: the kernel writes the fp32 weight and
  torch.mm multiplies (compute bound there, the dequantization a small part of it);
- without the native kernel (no compiler; warned once): the PyTorch reference, dequantize + F.linear;
- on CUDA: dequantize + F.linear (the formats are the same; no custom CUDA kernel).

`input_scale` (optional, [K]) multiplies x column-wise first: a pre-quantized checkpoint keeps its
integer grid while the RMSNorm weight that flint folds into the next Linear's columns is applied to
the activation instead.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from flint.engine.quant.formats import QuantWeight, TiledWeight, tile

log = logging.getLogger(__name__)

# Rows the register-dequantization kernel takes (no tiled kernel); more dequantize and call torch.mm (README, quantization).
SMALL_M_ROWS = 16

_kernel = None
_kernel_tried = False


def kernel():
    """The native module, or None where it cannot be built (warned once by the loader)."""
    global _kernel, _kernel_tried
    if not _kernel_tried:
        _kernel_tried = True
        from flint.engine import kernels

        try:
            _kernel = kernels.load("flint_quant_linear")
        except kernels.KernelUnavailable:
            _kernel = None
    return _kernel


def dequantize(w: QuantWeight, *, padded: bool = False) -> torch.Tensor:
    """fp32 [N, K] (or [N, Kp] with `padded`), through the kernel when it is there."""
    k = kernel() if w.data.device.type == "cpu" else None
    if k is None:
        full = w.dequantize()
        return F.pad(full, (0, w.padded_in_features - w.in_features)) if padded else full
    full = k.dequant_int8(w.data, w.scale) if w.bits == 8 else k.dequant_int4(w.data, w.scale, w.mins, w.group_size)
    return full if padded else full[:, : w.in_features]


class QuantLinear(nn.Module):
    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None,
                 input_scale: torch.Tensor | None = None):
        super().__init__()
        self.qweight = weight
        self.in_features, self.out_features = weight.in_features, weight.out_features
        device = weight.data.device
        self.bias = None if bias is None else bias.detach().to(device, torch.float32).contiguous()
        self.input_scale = None if input_scale is None else input_scale.detach().to(device, torch.float32).contiguous()
        self._tiled: TiledWeight | None = None   # the tiled kernel's layout
        self._op = None                          # the kernel's TiledLinear over it (the fast path)
        k = kernel() if device.type == "cpu" else None
        if k is not None and k.tiled_on():   # at load, not in the first request (~30 ms for a 16,000 x 512 matrix)
            self._bind(k)

    def rebind(self) -> None:
        """Bind the kernel's TiledLinear again (after the tiles moved, flint.engine.hugepages)."""
        self._bind(kernel())

    def _bind(self, k) -> None:
        w, t = self.qweight, self.tiled()
        self._op = k.TiledLinear(w.bits, t.data, t.scale, t.mins, w.out_features, w.padded_in_features,
                                 w.group_size, self.input_scale, self.bias)

    def tiled(self) -> TiledWeight:
        if self._tiled is None:
            self._tiled = tile(self.qweight)
        return self._tiled

    def extra_repr(self) -> str:
        w = self.qweight
        group = f", group_size={w.group_size}" if w.bits == 4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int{w.bits}{group}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # decode and verification: one call into the kernel's bound TiledLinear (None when the tiled path is off)
        if self._op is not None and x.dim() == 2 and x.dtype == torch.float32:
            y = self._op(x)
            if y is not None:
                return y
        return self._forward(x)

    def forward_unit_rms(self, x: torch.Tensor, floor_value: float) -> torch.Tensor | None:
        """self(unit_rms(x)) in one kernel call (the norm only scales each row's activation scales), or None
        where the tiled kernel does not take x (then the caller runs the two ops)."""
        return self.forward_fused(x, floor_value)

    def forward_fused(self, x: torch.Tensor, floor_value: float = -1.0, residual: torch.Tensor | None = None,
                      silu: bool = False) -> torch.Tensor | None:
        """residual + self(f(x)) in one tiled-kernel call, f being unit_rms (floor_value >= 0) or silu_mul (silu,
        x the [T, 2I] gate_up); None where the tiled kernel does not take x (the caller runs the ops)."""
        if self._op is not None and x.dim() == 2 and x.dtype == torch.float32:
            return self._op(x, floor_value, residual, silu)
        return None

    def decode_layer(self, layer: nn.Module, x: torch.Tensor, rotation: torch.Tensor, args: tuple) -> torch.Tensor | None:
        """`flint.engine.model.linear.decode_layer` with self as the layer's qkv: one tiled-kernel call when all
        four Linears are bound QuantLinears; None otherwise."""
        mods = layer._modules          # (not nn.Module.__getattr__: ~0.7 us a lookup, 12 a step)
        ops = (self._op, getattr(mods["o_proj"], "_op", None), getattr(mods["gate_up"], "_op", None),
               getattr(mods["down"], "_op", None))
        if x.dim() != 2 or x.dtype != torch.float32 or None in ops:
            return None
        return kernel().decode_layer(x.contiguous(), *ops, layer.floor_value, rotation, *args)

    def mlp_block(self, gate_up: nn.Module, down: nn.Module, o: torch.Tensor, x: torch.Tensor,
                  floor_value: float) -> torch.Tensor | None:
        """`flint.engine.model.linear.mlp_block` with self as o_proj: one tiled-kernel call when all three are
        bound QuantLinears; None otherwise."""
        layers = (self, gate_up, down)
        if (o.dim() != 2 or o.dtype != torch.float32 or x.dtype != torch.float32
                or not all(isinstance(m, QuantLinear) and m._op is not None for m in layers)):
            return None
        return kernel().mlp_block(o, x.contiguous(), self._op, gate_up._op, down._op, floor_value)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        w = self.qweight
        k = kernel() if x.device.type == "cpu" else None
        if k is not None and (k.tiled_on() or x2.shape[0] <= SMALL_M_ROWS):
            if k.tiled_on():
                if self._op is None:
                    self._bind(k)
                y = self._op(x2)
            elif w.bits == 8:
                y = k.linear_int8(x2, w.data, w.scale, self.input_scale, self.bias)
            else:
                y = k.linear_int4(x2, w.data, w.scale, w.mins, w.group_size, self.input_scale, self.bias)
        else:
            xf = x2.float()
            if self.input_scale is not None:
                xf = xf * self.input_scale
            y = F.linear(xf, dequantize(w), self.bias)
        return y.to(x.dtype).reshape(*lead, self.out_features)


class QuantEmbedding(nn.Module):
    """Token embedding over a quantized [vocab, d] matrix (shared with a tied QuantLinear lm_head)."""

    def __init__(self, weight: QuantWeight, dtype: torch.dtype):
        super().__init__()
        self.qweight = weight
        self.num_embeddings, self.embedding_dim = weight.out_features, weight.in_features
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = self.qweight
        if ids.dim() == 1 and self.dtype == torch.float32 and _kernel is not None and ids.device.type == "cpu":
            return _kernel.embedding(ids, w.bits, w.data, w.scale, w.mins, w.group_size, w.in_features)  # decode
        flat = ids.reshape(-1)
        k = kernel() if flat.device.type == "cpu" else None
        if k is not None:
            rows = k.embedding(flat, w.bits, w.data, w.scale, w.mins, w.group_size, w.in_features)
        else:
            rows = dequantize(w.rows(flat))
        return rows.to(self.dtype).reshape(*ids.shape, self.embedding_dim)
