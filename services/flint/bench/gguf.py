"""HF Llama checkpoint -> GGUF (float32), so `flint bench engine` can run llama.cpp on the same weights.

A GGUF file (version 3) is: the magic "GGUF", the version, the tensor and key/value counts, the
key/value metadata, one info record per tensor (name, dimensions innermost first, type, offset),
then the tensor data, every tensor aligned to `ALIGNMENT` bytes. Only what llama.cpp needs to run a
Llama-architecture model is written: hyperparameters, the BPE vocabulary and merges, and the
weights under llama.cpp's tensor names, all float32. llama.cpp's own quantizer makes the q8_0 and
q4_0 files from this one (`flint.bench.engine_llamacpp`).

Llama's q/k rows are stored for rotate-half rotary embeddings; llama.cpp's Llama rotates adjacent
pairs, so q/k rows are permuted per head exactly as flint's loader does (`interleave_rows`).

    write_llama_gguf(checkpoint_dir, out_file) -> out_file
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from flint.engine.model.config import ModelConfig
from flint.engine.model.rope import interleave_rows

ALIGNMENT = 32
_U32, _I32, _F32, _BOOL, _STRING, _ARRAY, _U64 = 4, 5, 6, 7, 8, 9, 10
_TENSOR_F32 = 0
_TOKEN_NORMAL, _TOKEN_CONTROL, _TOKEN_UNUSED = 1, 3, 5


class _Writer:
    def __init__(self):
        self.kv = bytearray()
        self.count = 0

    @staticmethod
    def string(s: str) -> bytes:
        b = s.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    def add(self, key: str, kind: int, value) -> None:
        self.kv += self.string(key) + struct.pack("<I", kind) + self.value(kind, value)
        self.count += 1

    def add_array(self, key: str, kind: int, values) -> None:
        body = b"".join(self.value(kind, v) for v in values) if kind == _STRING else \
            np.asarray(values, dtype={_I32: "<i4", _F32: "<f4", _U32: "<u4"}[kind]).tobytes()
        self.kv += self.string(key) + struct.pack("<IIQ", _ARRAY, kind, len(values)) + body
        self.count += 1

    def value(self, kind: int, v) -> bytes:
        if kind == _STRING:
            return self.string(v)
        return struct.pack({_U32: "<I", _I32: "<i", _F32: "<f", _BOOL: "<?", _U64: "<Q"}[kind], v)


def _pad(n: int) -> int:
    return -n % ALIGNMENT


def _vocabulary(path: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """tokens by id, token types, merges ("a b") from a `tokenizers` BPE tokenizer.json."""
    tok = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"{path}/tokenizer.json: only BPE tokenizers are converted, got {model.get('type')}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [_TOKEN_UNUSED] * vocab_size
    for text, i in model["vocab"].items():
        if i < vocab_size:
            tokens[i], types[i] = text, _TOKEN_NORMAL
    for added in tok.get("added_tokens", []):
        if added["id"] < vocab_size:
            tokens[added["id"]] = added["content"]
            types[added["id"]] = _TOKEN_CONTROL if added.get("special") else _TOKEN_NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, types, merges


def _tensors(path: Path, c: ModelConfig) -> list[tuple[str, torch.Tensor]]:
    """(llama.cpp name, float32 tensor) in file order."""
    with safe_open(str(path / "model.safetensors"), framework="pt", device="cpu") as f:
        def get(name: str) -> torch.Tensor:
            return f.get_tensor(name).float().contiguous()

        out = [("token_embd.weight", get("model.embed_tokens.weight")), ("output_norm.weight", get("model.norm.weight"))]
        if not c.tie_word_embeddings:
            out.append(("output.weight", get("lm_head.weight")))
        for i in range(c.num_layers):
            hf, g = f"model.layers.{i}.", f"blk.{i}."
            out += [
                (g + "attn_norm.weight", get(hf + "input_layernorm.weight")),
                (g + "attn_q.weight", interleave_rows(get(hf + "self_attn.q_proj.weight"), c.head_dim).contiguous()),
                (g + "attn_k.weight", interleave_rows(get(hf + "self_attn.k_proj.weight"), c.head_dim).contiguous()),
                (g + "attn_v.weight", get(hf + "self_attn.v_proj.weight")),
                (g + "attn_output.weight", get(hf + "self_attn.o_proj.weight")),
                (g + "ffn_norm.weight", get(hf + "post_attention_layernorm.weight")),
                (g + "ffn_gate.weight", get(hf + "mlp.gate_proj.weight")),
                (g + "ffn_up.weight", get(hf + "mlp.up_proj.weight")),
                (g + "ffn_down.weight", get(hf + "mlp.down_proj.weight")),
            ]
    return out


def write_llama_gguf(path: str | Path, out: str | Path) -> Path:
    """Convert the HF Llama checkpoint directory `path` (single model.safetensors) to a float32 GGUF `out`."""
    path, out = Path(path), Path(out)
    c = ModelConfig.from_dir(path)
    if c.model_type != "llama" or c.qkv_bias or c.rope_scaling is not None:
        raise ValueError("only plain Llama checkpoints (no attention bias, no rope scaling) are converted")
    w = _Writer()
    w.add("general.architecture", _STRING, "llama")
    w.add("general.name", _STRING, path.name)
    w.add("general.alignment", _U32, ALIGNMENT)
    w.add("general.file_type", _U32, 0)                       # all float32
    for key, kind, value in (
        ("context_length", _U32, c.max_position_embeddings), ("embedding_length", _U32, c.hidden_size),
        ("block_count", _U32, c.num_layers), ("feed_forward_length", _U32, c.intermediate_size),
        ("rope.dimension_count", _U32, c.head_dim), ("attention.head_count", _U32, c.num_heads),
        ("attention.head_count_kv", _U32, c.num_kv_heads), ("rope.freq_base", _F32, c.rope_theta),
        ("attention.layer_norm_rms_epsilon", _F32, c.rms_norm_eps), ("vocab_size", _U32, c.vocab_size),
    ):
        w.add("llama." + key, kind, value)
    tokens, types, merges = _vocabulary(path, c.vocab_size)
    w.add("tokenizer.ggml.model", _STRING, "gpt2")
    w.add("tokenizer.ggml.pre", _STRING, "qwen2")              # the demo tokenizer's split (Qwen2's)
    w.add_array("tokenizer.ggml.tokens", _STRING, tokens)
    w.add_array("tokenizer.ggml.token_type", _I32, types)
    w.add_array("tokenizer.ggml.merges", _STRING, merges)
    if c.eos_token_ids:
        w.add("tokenizer.ggml.eos_token_id", _U32, c.eos_token_ids[0])
    if c.bos_token_id is not None:
        w.add("tokenizer.ggml.bos_token_id", _U32, c.bos_token_id)
    w.add("tokenizer.ggml.add_bos_token", _BOOL, False)

    tensors = _tensors(path, c)
    infos, offset = bytearray(), 0
    for name, t in tensors:
        dims = tuple(reversed(t.shape))                        # GGUF lists the innermost dimension first
        infos += w.string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos += struct.pack("<IQ", _TENSOR_F32, offset)
        offset += t.numel() * 4
        offset += _pad(offset)
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), w.count) + bytes(w.kv) + bytes(infos)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(header + b"\0" * _pad(len(header)))
        for _, t in tensors:
            data = t.numpy().tobytes()
            f.write(data + b"\0" * _pad(len(data)))
    tmp.replace(out)
    return out
