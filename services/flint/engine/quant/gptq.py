"""Load a pre-quantized GPTQ int4 checkpoint (AutoGPTQ / GPTQModel / optimum layout) into flint's int4.

A checkpoint is GPTQ when config.json has `quantization_config.quant_method == "gptq"`. Each quantized
Linear `<prefix>` stores
    qweight int32 [K / 8, N]   8 codes along K per word, code j in bits 4j..4j+3
    qzeros  int32 [K / G, N / 8]  8 zero points along N per word (format "gptq": stored minus 1)
    scales  fp16  [K / G, N]
    g_idx   int32 [K]          group of each input column
and dequantizes to w[n, k] = scales[g, n] * (q[k, n] - zero[g, n]) with g = g_idx[k]. That is flint's int4
with scale = scales and min = -scales * zero, so the codes are repacked bit-exactly, q/k/v and gate/up
concatenated along output channels like the fp32 loader does. The RMSNorm weight the fp32 loader folds
into the qkv / gate_up columns becomes the QuantLinear's `input_scale` instead (folding it would leave
the integer grid). Checkpoints with act-order (`desc_act`, g_idx not sorted) or a group size flint's
kernels do not take (not 32/64/128) are dequantized and re-quantized at a supported group size, which
costs some accuracy (logged). The embedding and lm_head, full precision in GPTQ checkpoints, are
quantized by the usual pass when `quantization` is int8/int4 and kept otherwise.
Supports one tensor-parallel rank (any pipeline stage); 4-bit only. Codes move to the model's device (on
CUDA, QuantLinear dequantizes for F.linear).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from flint.engine.model.rope import interleave_rows
from flint.engine.quant.formats import GROUP_SIZES, QuantWeight, pack_int4, quantize_int4
from flint.engine.quant.modules import QuantLinear
from flint.errors import InvalidArgument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GptqConfig:
    bits: int
    group_size: int           # -1 = one group over all of K
    desc_act: bool
    zero_offset: int          # 1 for checkpoint_format "gptq" (zeros stored minus 1), 0 for "gptq_v2"


def gptq_config(path: Path) -> GptqConfig | None:
    """The GPTQ settings of checkpoint `path`, or None when it is not a GPTQ checkpoint."""
    try:
        q = json.loads((Path(path) / "config.json").read_text(encoding="utf-8")).get("quantization_config")
    except (OSError, ValueError):
        return None
    if not isinstance(q, dict):
        return None
    method = q.get("quant_method")
    if method != "gptq":
        raise InvalidArgument(f"{path}/config.json: quantization_config.quant_method {method!r} is not supported; "
                              "flint loads GPTQ int4 checkpoints, or full-precision ones with --quantization")
    cfg = GptqConfig(int(q.get("bits", 4)), int(q.get("group_size", 128)), bool(q.get("desc_act", False)),
                     0 if q.get("checkpoint_format", "gptq") == "gptq_v2" else 1)
    if cfg.bits != 4:
        raise InvalidArgument(f"{path}/config.json: GPTQ bits={cfg.bits}; flint loads 4-bit GPTQ checkpoints only")
    return cfg


def unpack_rows(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] holding 8 codes per word along R -> uint8 [R * 8, C]."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32)
    codes = (packed[:, None, :] >> shifts[None, :, None]) & 0xF        # [R, 8, C]
    return codes.reshape(-1, packed.shape[1]).to(torch.uint8)


def unpack_cols(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C] holding 8 codes per word along C -> uint8 [R, C * 8]."""
    return unpack_rows(packed.T.contiguous()).T.contiguous()


def read_linear(weights, prefix: str, in_features: int, out_features: int, cfg: GptqConfig,
                fallback_group: int) -> QuantWeight:
    """One GPTQ Linear `prefix` as a flint int4 QuantWeight [out_features, in_features]."""
    q = unpack_rows(weights.get(prefix + ".qweight").to(torch.int32))            # [K, N]
    scales = weights.get(prefix + ".scales").float()                              # [Gs, N]
    zeros = unpack_cols(weights.get(prefix + ".qzeros").to(torch.int32)).float() + cfg.zero_offset
    k, n = q.shape
    if (k, n) != (in_features, out_features):
        raise InvalidArgument(f"GPTQ tensor {prefix}.qweight unpacks to [{k}, {n}] (K, N); config.json implies "
                              f"[{in_features}, {out_features}]")
    group = k if cfg.group_size == -1 else cfg.group_size
    g_idx = weights.get(prefix + ".g_idx").long() if weights.has(prefix + ".g_idx") else torch.arange(k) // group
    zeros, scales = zeros[:, :n], scales[:, :n]
    if group in GROUP_SIZES and k % group == 0 and torch.equal(g_idx, torch.arange(k) // group):
        return QuantWeight(4, pack_int4(q.T.contiguous()), scales.T.contiguous(), (-scales * zeros).T.contiguous(),
                           k, group)
    w = scales[g_idx] * (q.float() - zeros[g_idx])                                # [K, N]
    regroup = group if group in GROUP_SIZES else fallback_group
    log.warning("GPTQ %s: group size %d%s; re-quantizing at group size %d (some accuracy lost)", prefix, group,
                ", act-order" if cfg.desc_act else "", regroup)
    return quantize_int4(w.T, regroup)


def load(model, weights, cfg: GptqConfig, fallback_group: int):
    """Fill `model` (built on meta by flint.engine.loader) from GPTQ `weights`; returns it."""
    c, s = model.config, model.shard
    if s.tp_size != 1:
        raise InvalidArgument(f"GPTQ checkpoints load with tp_size=1 only (got tp_size={s.tp_size})")
    d, hd = c.hidden_size, c.head_dim
    tensors: dict[str, torch.Tensor] = {}
    for local, layer in enumerate(range(s.layer_start, s.layer_end)):
        hf, mod = f"model.layers.{layer}.", model.layers[local]
        att, mlp = hf + "self_attn.", hf + "mlp."

        def lin(name: str, k: int, n: int) -> QuantWeight:
            return read_linear(weights, name, k, n, cfg, fallback_group).to(model.device)

        def rotary_order(n: int) -> torch.Tensor:   # q/k rows go to flint's interleaved rotary order
            return interleave_rows(torch.arange(n)[:, None], hd)[:, 0]

        qkv = QuantWeight.cat([lin(att + "q_proj", d, c.q_size).rows(rotary_order(c.q_size)),
                               lin(att + "k_proj", d, c.kv_size).rows(rotary_order(c.kv_size)),
                               lin(att + "v_proj", d, c.kv_size)])
        bias = None
        if c.qkv_bias:
            bias = torch.cat([interleave_rows(weights.get(att + "q_proj.bias"), hd),
                              interleave_rows(weights.get(att + "k_proj.bias"), hd), weights.get(att + "v_proj.bias")])
        norm_in = weights.get(hf + "input_layernorm.weight", shape=(d,)).float() * math.sqrt(d)
        norm_post = weights.get(hf + "post_attention_layernorm.weight", shape=(d,)).float() * math.sqrt(d)
        mod.qkv = QuantLinear(qkv, bias, input_scale=norm_in)
        mod.o_proj = QuantLinear(lin(att + "o_proj", c.q_size, d))
        if c.o_bias:
            tensors[f"layers.{local}.o_bias"] = weights.get(att + "o_proj.bias", shape=(d,))
        mod.gate_up = QuantLinear(QuantWeight.cat([lin(mlp + "gate_proj", d, c.intermediate_size),
                                                   lin(mlp + "up_proj", d, c.intermediate_size)]),
                                  input_scale=norm_post)
        mod.down = QuantLinear(lin(mlp + "down_proj", c.intermediate_size, d))
    if model.is_first:
        tensors["embed.weight"] = weights.get("model.embed_tokens.weight", shape=(c.vocab_size, d))
    if model.is_last:
        tensors["norm"] = weights.get("model.norm.weight", shape=(d,))
        if c.tie_word_embeddings and model.is_first:
            tensors["lm_head.weight"] = tensors["embed.weight"]
        else:   # a missing untied lm_head is NotFound, as in the fp32 loader
            head = "model.embed_tokens.weight" if c.tie_word_embeddings else "lm_head.weight"
            tensors["lm_head.weight"] = weights.get(head, shape=(c.vocab_size, d))
    model.load_state({k: t.to(device=model.device, dtype=model.dtype).contiguous() for k, t in tensors.items()})
    return model
