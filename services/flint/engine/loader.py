"""Load an HF Llama-family checkpoint directory into a `CausalLM` (or one shard of it).

Reads `config.json` and safetensors weights, single file (`model.safetensors`)
or sharded (`model.safetensors.index.json`). HF names map to flint names;
q/k/v rows are concatenated into one `qkv` matrix and gate/up into `gate_up`;
q/k rows are reordered per head for flint's interleaved rotary layout (see
`flint.engine.model.rope`), and the per-layer RMSNorm weights are folded into
the qkv and gate_up columns (see `flint.engine.model.llama`).
Under tensor parallelism each rank reads only its rows/columns through
safetensors slices, and a pipeline stage reads only its layers, so a shard
never holds more than its part in memory.

Public API (stable):
    load_model(path, *, dtype=torch.float32, device="cpu", shard=None, all_reduce=None,
               quantization="none", quant_group_size=128) -> CausalLM
    load_config(path) -> ModelConfig
    parse_dtype("float32" | "bfloat16" | "float16" | torch.dtype) -> torch.dtype
`quantization` "int8" / "int4" quantizes every Linear and the embedding after loading (see
`flint.engine.quant`). A GPTQ int4 checkpoint (`quantization_config` in config.json) loads its
Linears as they are (`flint.engine.quant.gptq`); `quantization` then applies to the embedding/lm_head.
Errors: NotFound for a missing directory/file/tensor (naming the path),
InvalidArgument for malformed files or shapes that do not fit config.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

from flint.engine.model.config import ModelConfig
from flint.engine.model.llama import CausalLM
from flint.engine.model.rope import interleave_rows
from flint.engine.model.shard import AllReduce, ShardSpec
from flint.errors import InvalidArgument, NotFound

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype):
        if value in _DTYPES.values():
            return value
        value = str(value).removeprefix("torch.")
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    name = aliases.get(value, value)
    if name not in _DTYPES:
        raise InvalidArgument(f"dtype {value!r} is not supported; use one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def load_config(path: str | Path) -> ModelConfig:
    return ModelConfig.from_dir(path)


def load_model(
    path: str | Path,
    *,
    dtype: str | torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    shard: ShardSpec | None = None,
    all_reduce: AllReduce | None = None,
    quantization: str = "none",
    quant_group_size: int = 128,
) -> CausalLM:
    from flint.engine import hugepages, quant
    from flint.engine.model.packed import pack_model

    path = Path(path)
    config = load_config(path)
    dtype = parse_dtype(dtype)
    model = CausalLM(config, shard, dtype=dtype, device=device, all_reduce=all_reduce)
    gptq = quant.gptq.gptq_config(path)
    with _Weights(path) as weights:
        if gptq is not None:
            model = quant.gptq.load(model, weights, gptq, quant_group_size)
        else:
            tensors = _read_shard(weights, config, model.shard, model.is_first, model.is_last)
    if gptq is None:
        model.load_state({name: t.to(device=device, dtype=dtype).contiguous() for name, t in tensors.items()})
        del tensors
    model = quant.quantize_model(model, quantization, quant_group_size)
    pack_model(model)               # fp32 CPU Linears onto the panel-packed kernel (flint.engine.model.packed)
    hugepages.move_weights(model)   # the decode step streams them: no 4 KiB page walls (flint.engine.hugepages)
    return model


class _Weights:
    """HF tensor name -> open safetensors file, over one file or a sharded index."""

    def __init__(self, path: Path):
        index = path / "model.safetensors.index.json"
        single = path / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f"{index} is not a valid safetensors index (needs a weight_map): {exc}")
            self._file_of = {name: path / file for name, file in weight_map.items()}
        elif single.is_file():
            self._file_of = None
            self._single = single
        else:
            raise NotFound(f"no weights in {path}: expected model.safetensors or model.safetensors.index.json")
        self._open: dict[Path, object] = {}
        self._names: set[str] | None = None

    def __enter__(self) -> "_Weights":
        return self

    def __exit__(self, *exc) -> None:
        self._open.clear()

    def _handle(self, file: Path):
        if file not in self._open:
            if not file.is_file():
                raise NotFound(f"weight file {file} is missing (listed in model.safetensors.index.json)")
            try:
                self._open[file] = safe_open(str(file), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error types
                raise InvalidArgument(f"{file} is not a valid safetensors file: {exc}") from exc
        return self._open[file]

    def _file(self, name: str) -> Path:
        if self._file_of is None:
            handle = self._handle(self._single)
            if name not in handle.keys():
                raise NotFound(f"tensor {name!r} not found in {self._single}")
            return self._single
        if name not in self._file_of:
            raise NotFound(f"tensor {name!r} not found in the weight_map of model.safetensors.index.json")
        return self._file_of[name]

    def has(self, name: str) -> bool:
        if self._file_of is not None:
            return name in self._file_of
        return name in self._handle(self._single).keys()

    def get(self, name: str, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None,
            shape: tuple[int, ...] | None = None) -> torch.Tensor:
        """Read tensor `name`, optionally only rows [a, b) / columns [a, b); check the full shape."""
        file = self._file(name)
        sl = self._handle(file).get_slice(name)
        full = tuple(sl.get_shape())
        if shape is not None and full != shape:
            raise InvalidArgument(f"tensor {name!r} in {file} has shape {list(full)}, config.json implies {list(shape)}")
        if rows is None and cols is None:
            return sl[:]
        r = slice(*rows) if rows else slice(None)
        if len(full) == 1:
            return sl[r]
        return sl[r, slice(*cols) if cols else slice(None)]


def _read_shard(w: _Weights, c: ModelConfig, s: ShardSpec, first: bool, last: bool) -> dict[str, torch.Tensor]:
    d, hd = c.hidden_size, c.head_dim
    q0, nq = s.local_heads(c)
    k0, nk = s.local_kv_heads(c)
    i0, ni = s.local_intermediate(c)
    q_rows, kv_rows, i_rows = (q0 * hd, (q0 + nq) * hd), (k0 * hd, (k0 + nk) * hd), (i0, i0 + ni)
    out: dict[str, torch.Tensor] = {}
    embed_name = "model.embed_tokens.weight"
    if first:
        out["embed.weight"] = w.get(embed_name, shape=(c.vocab_size, d))
    if last:
        out["norm"] = w.get("model.norm.weight", shape=(d,))
        head = "lm_head.weight"
        if c.tie_word_embeddings or not w.has(head):
            if not c.tie_word_embeddings:
                raise NotFound("tensor 'lm_head.weight' not found and config.json has tie_word_embeddings=false")
            head = embed_name
        if head == embed_name and first:
            out["lm_head.weight"] = out["embed.weight"]
        else:
            out["lm_head.weight"] = w.get(head, shape=(c.vocab_size, d))
    for local, layer in enumerate(range(s.layer_start, s.layer_end)):  # type: ignore[arg-type]
        hf, fl = f"model.layers.{layer}.", f"layers.{local}."
        att = hf + "self_attn."
        # RMSNorm weights (times sqrt(d)) fold into the columns of the next Linear; see model/llama.py.
        input_scale = w.get(hf + "input_layernorm.weight", shape=(d,)).float() * math.sqrt(d)
        post_scale = w.get(hf + "post_attention_layernorm.weight", shape=(d,)).float() * math.sqrt(d)
        out[fl + "qkv.weight"] = torch.cat([
            interleave_rows(w.get(att + "q_proj.weight", rows=q_rows, shape=(c.q_size, d)), hd),
            interleave_rows(w.get(att + "k_proj.weight", rows=kv_rows, shape=(c.kv_size, d)), hd),
            w.get(att + "v_proj.weight", rows=kv_rows, shape=(c.kv_size, d)),
        ]).float() * input_scale
        if c.qkv_bias:
            out[fl + "qkv.bias"] = torch.cat([
                interleave_rows(w.get(att + "q_proj.bias", rows=q_rows, shape=(c.q_size,)), hd),
                interleave_rows(w.get(att + "k_proj.bias", rows=kv_rows, shape=(c.kv_size,)), hd),
                w.get(att + "v_proj.bias", rows=kv_rows, shape=(c.kv_size,)),
            ])
        out[fl + "o_proj.weight"] = w.get(att + "o_proj.weight", cols=q_rows, shape=(d, c.q_size))
        if c.o_bias:
            out[fl + "o_bias"] = w.get(att + "o_proj.bias", shape=(d,))
        mlp, inter = hf + "mlp.", c.intermediate_size
        out[fl + "gate_up.weight"] = torch.cat([
            w.get(mlp + "gate_proj.weight", rows=i_rows, shape=(inter, d)),
            w.get(mlp + "up_proj.weight", rows=i_rows, shape=(inter, d)),
        ]).float() * post_scale
        out[fl + "down.weight"] = w.get(mlp + "down_proj.weight", cols=i_rows, shape=(d, inter))
    return out
