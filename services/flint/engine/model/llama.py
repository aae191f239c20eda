"""The Llama-family decoder (Llama 2/3, Qwen2/2.5, Mistral) as flint runs it.

Shapes: all sequences of one engine step are packed along one token axis T;
positions come per token; the KV cache is the `AttentionBackend`'s business.

    model = CausalLM(config, shard, dtype=..., device=..., all_reduce=...)
    hidden = model(input_ids [T], positions [T], attn)      # [T, d]
    logits = model.compute_logits(hidden[last_rows])         # float32 [N, vocab]

The model is built with parameters on the meta device and filled by
`flint.engine.loader` (or `load_state`), so a shard never allocates weights it
does not hold. QKV and gate/up are fused Linears (one GEMM/GEMV each instead
of three/two), which matters for decode where every op costs tens of µs.
For the same reason the per-layer RMSNorm weights are folded into the columns
of the Linear that follows (qkv, gate_up), with the sqrt(hidden) factor:

    W @ (w * x / sqrt(mean(x^2) + eps)) == (W * (w * sqrt(d))) @ (x / hypot(|x|, sqrt(d * eps)))

so a layer norm is three small kernels (norm, hypot, div) instead of about
eight, and on the few-row kernels (fp32 and quantized) no kernel of its own: `rms_linear` scales
each row of the Linear's result (or its int8 activation scales) by 1 / hypot(|x|, floor). The final norm keeps its weight (tied embeddings would otherwise need
a second copy of the vocabulary matrix).

On a pipeline stage that is not the first, pass `hidden_states` [T, d] instead
of `input_ids`; a stage that is not the last returns the residual stream
before the final norm (feed it to the next stage); the last stage returns the
final-normed hidden states that `compute_logits` projects.

`attn` is called with the layer index LOCAL to this shard (0 for the shard's
first layer), so a stage's KV cache is sized `model.num_local_layers`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flint.engine.model.attention import AttentionBackend
from flint.engine.model.config import ModelConfig
from flint.engine.model.linear import (Linear, decode_layer, linear_add, mlp_block, native_available,
                                       rms_linear, rms_norm, silu_linear_add, silu_mul)
from flint.engine.model.rope import Rotary, apply_rotary
from flint.engine.model.shard import AllReduce, ShardSpec
from flint.errors import InvalidArgument

_META = torch.device("meta")


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, shard: ShardSpec, dtype: torch.dtype, floor: torch.Tensor):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.n_heads = shard.local_heads(config)[1]
        self.n_kv = shard.local_kv_heads(config)[1]
        self.head_dim = hd
        self.floor = floor   # 0-dim sqrt(d * eps), shared by the layers
        self.floor_value = math.sqrt(d * config.rms_norm_eps)
        inter = shard.local_intermediate(config)[1]
        kw = dict(device=_META, dtype=dtype)
        self.qkv = Linear(d, (self.n_heads + 2 * self.n_kv) * hd, bias=config.qkv_bias, **kw)
        self.o_proj = Linear(self.n_heads * hd, d, bias=False, **kw)
        # Row-parallel bias is added once, after the all-reduce.
        self.o_bias = nn.Parameter(torch.empty(d, **kw), requires_grad=False) if config.o_bias else None
        self.gate_up = Linear(d, 2 * inter, bias=False, **kw)
        self.down = Linear(inter, d, bias=False, **kw)

    def forward(
        self,
        x: torch.Tensor,        # [T, d]
        rotation: torch.Tensor, # [T, 1, D/2, 2] (cos, sin); see rope.Rotary
        attn: AttentionBackend,
        layer_idx: int,
        all_reduce: AllReduce | None,
    ) -> torch.Tensor:
        t = x.shape[0]
        h, hd, kv = self.n_heads, self.head_dim, self.n_kv
        if all_reduce is None and self.o_bias is None:
            y = decode_layer(self, x, rotation, attn, layer_idx)   # the whole layer in one native call, or None
            if y is not None:
                return y
        qkv = rms_linear(self.qkv, x, self.floor, self.floor_value)  # [T, (H + 2KV) * D] (input norm folded in)
        fused = getattr(attn, "attend_qkv", None)               # rotary, KV write and attention in one kernel call
        o = fused(layer_idx, qkv, rotation) if fused is not None else None
        if o is None:
            qk = apply_rotary(qkv[:, : (h + kv) * hd].view(t, h + kv, hd), rotation)  # [T, H + KV, D]
            q, k = qk[:, :h], qk[:, h:]
            v = qkv[:, (h + kv) * hd :].view(t, kv, hd)         # [T, KV, D]
            o = attn(layer_idx, q, k, v)                        # [T, H, D]
        if all_reduce is None and self.o_bias is None:
            y = mlp_block(self.o_proj, self.gate_up, self.down, o.reshape(t, h * hd), x, self.floor_value)
            if y is not None:                                   # the rest of the layer in one native call
                return y
            x = linear_add(self.o_proj, o.reshape(t, h * hd), x)   # x + o_proj(o), one call on the native kernels
        else:
            o = self.o_proj(o.reshape(t, h * hd))               # [T, d] (partial sum under TP)
            if all_reduce is not None:
                o = all_reduce(o)
            if self.o_bias is not None:
                o = o + self.o_bias
            x = x + o
        gate_up = rms_linear(self.gate_up, x, self.floor, self.floor_value)  # [T, 2I] (post norm folded in)
        if all_reduce is None:
            return silu_linear_add(self.down, gate_up, x)       # x + down(silu_mul(gate_up))
        return x + all_reduce(self.down(silu_mul(gate_up)))     # down's partial sums reduced first under TP


class CausalLM(nn.Module):
    def __init__(
        self,
        config: ModelConfig,
        shard: ShardSpec | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        all_reduce: AllReduce | None = None,
    ):
        super().__init__()
        shard = (shard or ShardSpec()).resolve(config)
        if shard.tp_size > 1 and all_reduce is None:
            raise InvalidArgument(f"tp_size={shard.tp_size} needs an all_reduce callable")
        self.config, self.shard, self.dtype = config, shard, dtype
        self.device = torch.device(device)
        self.all_reduce = all_reduce if shard.tp_size > 1 else None
        self.is_first, self.is_last = shard.is_first(), shard.is_last(config)
        kw = dict(device=_META, dtype=dtype)
        d = config.hidden_size
        self.embed = nn.Embedding(config.vocab_size, d, **kw) if self.is_first else None
        floor = torch.tensor(math.sqrt(d * config.rms_norm_eps), dtype=dtype, device=self.device)
        self.layers = nn.ModuleList(
            DecoderLayer(config, shard, dtype, floor) for _ in range(shard.layer_start, shard.layer_end)  # type: ignore[arg-type]
        )
        self.norm = nn.Parameter(torch.empty(d, **kw), requires_grad=False) if self.is_last else None
        self.lm_head = Linear(d, config.vocab_size, bias=False, **kw) if self.is_last else None
        self.rotary = Rotary(config, self.device, dtype)
        self._norm_scaled: torch.Tensor | None = None           # final norm weight * sqrt(d), set by load_state
        self.requires_grad_(False)

    @property
    def num_local_layers(self) -> int:
        return len(self.layers)

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        """Take ownership of flint-named tensors (see `flint.engine.loader.flint_names`)."""
        missing = set(self.state_dict()) - set(tensors)
        unexpected = set(tensors) - set(self.state_dict())
        if missing or unexpected:
            raise InvalidArgument(f"weights do not fit the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
        self.load_state_dict(tensors, assign=True, strict=True)
        if self.norm is not None:                               # weight * sqrt(d), the native final norm's
            self._norm_scaled = (self.norm * math.sqrt(self.config.hidden_size)).contiguous()
        if self.lm_head is not None and self.embed is not None and self.config.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.requires_grad_(False)
        self.eval()
        if self.device.type == "cpu" and self.dtype == torch.float32:
            native_available()   # build the few-row kernel now (once per machine), not in the first request

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor | None,         # [T] int64 (first stage)
        positions: torch.Tensor,                # [T] int64
        attn: AttentionBackend,
        *,
        hidden_states: torch.Tensor | None = None,  # [T, d] (later stages)
    ) -> torch.Tensor:
        if self.embed is not None:
            if input_ids is None:
                raise InvalidArgument("the first pipeline stage needs input_ids")
            x = self.embed(input_ids)           # [T, d]
        else:
            if hidden_states is None:
                raise InvalidArgument("a pipeline stage after the first needs hidden_states")
            x = hidden_states
        rotation = self.rotary.rotation(positions)
        for i, layer in enumerate(self.layers):
            x = layer(x, rotation, attn, i, self.all_reduce)
        return self.final_norm(x)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's final RMSNorm of the residual stream x [T, d]; identity on other stages."""
        if self.norm is None:
            return x
        if torch.compiler.is_compiling() or self._norm_scaled is None:   # (no guard on the attribute in graphs)
            return F.rms_norm(x, (x.shape[-1],), self.norm, self.config.rms_norm_eps)
        return rms_norm(x, self._norm_scaled, self.norm, self.config.rms_norm_eps,
                        math.sqrt(self.config.hidden_size * self.config.rms_norm_eps))

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, d] (final-normed, from the last stage) -> float32 logits [N, vocab]."""
        if self.lm_head is None:
            raise InvalidArgument("compute_logits runs on the last pipeline stage only")
        return self.lm_head(hidden).float()
