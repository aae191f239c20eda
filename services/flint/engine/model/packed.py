"""`PackedLinear`, `PackedEmbedding`, `pack_model`: an fp32 CPU model's Linears over panel-packed weights.

After loading, `pack_model` turns every float32 CPU `nn.Linear` into a `PackedLinear`, whose weights are stored
as panels of 64 output channels, [ceil(N / 64), K, 64] (`kernels/skinny_f32.cpp`: pack_f32, linear_packed). The
kernel multiplies any number of rows (decode, speculative verification, prefill) as outer products: each weight
vector is loaded once for up to 6 rows and the accumulators stay in registers for the whole K. Measured on the
2-core Zen 5 EPYC (loadtests/results/packed-f32-20261201.md): at 16 rows 2.6-3.4x faster on one thread (1.7-2.9x
on two) than the row-dot-product kernel the model used before (which kept the [N, K] layout), as fast or faster
at one row, and 2.3x faster than F.linear at 512 rows. Each output is summed in k order, whatever the row count,
so a row gets the same bits decoded alone or beside others.

The packed matrix replaces the [N, K] one (no second copy). A tied embedding reads its rows from the lm_head's
panels (`PackedEmbedding`; a strided read of K floats per token). Under torch.compile the kernel runs as the
custom op `flint::linear_packed`, opaque to the compiler. `FLINT_NATIVE_LINEAR=0`, a non-CPU device, another
dtype or no C++ compiler leave the model's Linears as they are.
"""

from __future__ import annotations

import torch
from torch import nn

from flint.engine.model.linear import _kernel

PANEL = 64   # output channels per panel (kernels/skinny_f32.cpp kPanel)


def _packable(w: torch.Tensor) -> bool:
    return w.dtype == torch.float32 and w.device.type == "cpu" and w.dim() == 2


@torch.library.custom_op("flint::linear_packed", mutates_args=())
def _linear_packed_op(x: torch.Tensor, packed: torch.Tensor, n: int, bias: torch.Tensor | None) -> torch.Tensor:
    return _kernel().linear_packed(x.contiguous(), packed, n, bias)


@_linear_packed_op.register_fake
def _(x, packed, n, bias):
    return x.new_empty(x.shape[0], n)


class PackedLinear(nn.Module):
    """y = x @ W^T + b with W held as 64-column panels (see the module docstring); drop-in for an fp32 Linear."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("packed", _kernel().pack_f32(weight.detach()))
        self.register_buffer("bias", None if bias is None else bias.detach().float().contiguous())

    @property
    def weight(self) -> torch.Tensor:
        """The [N, K] matrix, unpacked into a new tensor (tests, weight inspection; not on any step's path)."""
        return _kernel().unpack_f32(self.packed, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if torch.compiler.is_compiling():
            y = _linear_packed_op(x2, self.packed, self.out_features, self.bias)
        else:
            y = _kernel().linear_packed(x2.contiguous(), self.packed, self.out_features, self.bias)
        return y.reshape(*lead, self.out_features)

    def forward_unit_rms(self, x: torch.Tensor, floor_value: float) -> torch.Tensor | None:
        """self(unit_rms(x)) in one kernel call (any number of rows)."""
        return self.forward_fused(x, floor_value)

    def forward_fused(self, x: torch.Tensor, floor_value: float = -1.0, residual: torch.Tensor | None = None,
                      silu: bool = False) -> torch.Tensor | None:
        """residual + self(f(x)) in one kernel call, f being unit_rms (floor_value >= 0) or silu_mul (silu, x the
        [T, 2I] gate_up); None for inputs the kernel does not take (the caller runs the ops)."""
        if x.dim() != 2 or x.dtype != torch.float32 or torch.compiler.is_compiling():
            return None
        res = None if residual is None else residual.contiguous()
        return _kernel().linear_packed(x.contiguous(), self.packed, self.out_features, self.bias, floor_value,
                                       res, silu)

    def decode_layer(self, layer: nn.Module, x: torch.Tensor, rotation: torch.Tensor, args: tuple) -> torch.Tensor | None:
        """`flint.engine.model.linear.decode_layer` with self as the layer's qkv: one kernel call when its o_proj,
        gate_up and down are bias-free `PackedLinear`s (qkv may have a bias: Qwen2)."""
        mods = layer._modules   # (not nn.Module.__getattr__: ~0.7 us a lookup)
        o, gu, down = mods["o_proj"], mods["gate_up"], mods["down"]
        if (x.dim() != 2 or x.dtype != torch.float32 or torch.compiler.is_compiling()
                or not all(type(m) is PackedLinear and m.bias is None for m in (o, gu, down))):
            return None
        return _kernel().decode_layer_packed(x.contiguous(), self.packed, self.out_features, self.bias, o.packed,
                                             gu.packed, gu.out_features, down.packed, layer.floor_value, rotation,
                                             *args)

    def mlp_block(self, gate_up: nn.Module, down: nn.Module, o: torch.Tensor, x: torch.Tensor,
                  floor_value: float) -> torch.Tensor | None:
        """`flint.engine.model.linear.mlp_block` with self as o_proj: one kernel call when all three are bias-free
        `PackedLinear`s."""
        if (o.dim() != 2 or o.dtype != torch.float32 or x.dtype != torch.float32 or torch.compiler.is_compiling()
                or not all(type(m) is PackedLinear and m.bias is None for m in (self, gate_up, down))):
            return None
        return _kernel().mlp_block_packed(o.contiguous(), x.contiguous(), self.packed, gate_up.packed,
                                          gate_up.out_features, down.packed, floor_value)


class PackedEmbedding(nn.Module):
    """The token embedding tied to a `PackedLinear` lm_head: rows read from the lm_head's panels (one matrix)."""

    def __init__(self, head: PackedLinear):
        super().__init__()
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.register_buffer("packed", head.packed)   # the same tensor (huge-page moves keep them tied)

    @property
    def weight(self) -> torch.Tensor:
        return _kernel().unpack_f32(self.packed, self.num_embeddings)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        flat = ids.reshape(-1)
        if torch.compiler.is_compiling():   # the same gather as torch indexing (traceable)
            rows = self.packed[flat // PANEL, :, flat % PANEL]
        else:
            rows = _kernel().embedding_packed(flat, self.packed, self.num_embeddings)
        return rows.reshape(*ids.shape, self.embedding_dim)


def pack_model(model: nn.Module) -> nn.Module:
    """Turn `model`'s float32 CPU `nn.Linear`s into `PackedLinear`s, in place (a tied embedding into a
    `PackedEmbedding` over the lm_head's panels); a no-op where the kernel is unavailable. Returns the model."""
    if _kernel() is None:
        return model
    packed: dict[int, PackedLinear] = {}   # id(weight Parameter) -> its PackedLinear (tied weights)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and _packable(child.weight):
                new = PackedLinear(child.weight, child.bias)
                packed[id(child.weight)] = new
                setattr(parent, name, new)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Embedding) and id(child.weight) in packed:
                setattr(parent, name, PackedEmbedding(packed[id(child.weight)]))
    return model


__all__ = ["PANEL", "PackedEmbedding", "PackedLinear", "pack_model"]
