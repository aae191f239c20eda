"""Weight-only quantization (int8 per output channel, int4 group-wise) of a loaded model.

    from flint.engine.quant import quantize_model
    quantize_model(model, "int4", group_size=128)   # in place; returns the model

A pass over the built model: every `nn.Linear` becomes a `QuantLinear` and every `nn.Embedding` a
`QuantEmbedding`; a tied lm_head and embedding share one quantized matrix. It runs after the weights
are loaded (and fused: q/k/v and gate/up are single Linears by then), so it composes with whatever
the model does at load. Pre-quantized GPTQ checkpoints come in through `flint.engine.quant.gptq`
(already `QuantLinear`s); the pass then quantizes only what is still full precision.

Formats: `flint.engine.quant.formats`; kernels: `flint/engine/kernels/quant_linear.cpp`.
"""

from __future__ import annotations

from torch import nn

from flint.engine.config import QUANTIZATION_MODES as MODES
from flint.engine.config import EngineConfig
from flint.engine.quant.formats import GROUP_SIZES, QuantWeight, quantize
from flint.engine.quant.modules import QuantEmbedding, QuantLinear
from flint.engine.quant import gptq  # noqa: E402  (flint.engine.loader uses quant.gptq)

DEFAULT_GROUP_SIZE = EngineConfig.quant_group_size

__all__ = ["MODES", "GROUP_SIZES", "DEFAULT_GROUP_SIZE", "QuantWeight", "QuantLinear", "QuantEmbedding",
           "quantize_model", "weight_bytes"]


def quantize_model(model: nn.Module, mode: str, group_size: int = DEFAULT_GROUP_SIZE) -> nn.Module:
    if mode == "none":
        return model
    shared: dict[int, QuantWeight] = {}   # id(weight Parameter) -> its quantized form (tied weights)

    def quantized(weight) -> QuantWeight:
        if id(weight) not in shared:
            shared[id(weight)] = quantize(weight, mode, group_size)
        return shared[id(weight)]

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, QuantLinear(quantized(child.weight), child.bias))
            elif isinstance(child, nn.Embedding):
                setattr(parent, name, QuantEmbedding(quantized(child.weight), child.weight.dtype))
    return model


def weight_bytes(model: nn.Module) -> int:
    """Bytes of weights one decode step reads: every Linear / quantized / packed matrix once (tied ones once)."""
    from flint.engine.model.packed import PackedLinear

    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, (QuantLinear, QuantEmbedding)):
            w = module.qweight
            if id(w) not in seen and isinstance(module, QuantLinear):
                seen.add(id(w))
                total += w.nbytes
        elif isinstance(module, PackedLinear) and id(module.packed) not in seen:
            seen.add(id(module.packed))
            total += module.packed.nbytes
        elif isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel() * module.weight.element_size()
    return total
