"""`ModelConfig`: what flint needs from an HF `config.json`, validated.

Supported architectures: `llama` (Llama 2/3, CodeLlama, DeepSeek-Coder v1),
`qwen2` (Qwen2 / Qwen2.5 / Qwen2.5-Coder: q/k/v bias) and `mistral`
(sliding-window attention; see `sliding_window`). Both the transformers 4
spelling (`rope_theta` + `rope_scaling`) and the transformers 5 spelling
(`rope_parameters`) of rotary settings are read.

Public API (stable):
    ModelConfig.from_dict(d) / ModelConfig.from_dir(path)
    RopeScaling
Anything unsupported or malformed raises `flint.errors.InvalidArgument` naming
the field and what is supported; a missing file raises `NotFound`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from flint.errors import InvalidArgument, NotFound

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


@dataclass(frozen=True)
class RopeScaling:
    """Rotary frequency scaling. `type` is one of SUPPORTED_ROPE_TYPES except "default"."""

    type: str
    factor: float
    low_freq_factor: float = 1.0                 # llama3
    high_freq_factor: float = 4.0                # llama3
    original_max_position_embeddings: int = 8192  # llama3, yarn
    beta_fast: float = 32.0                      # yarn: ramp bounds, in rotations
    beta_slow: float = 1.0
    truncate: bool = True                        # yarn: round the ramp bounds to whole dimensions
    attention_factor: float = 1.0                # yarn: cos/sin are scaled by this


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: RopeScaling | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool            # Qwen2 always; Llama when attention_bias
    o_bias: bool              # Llama attention_bias also biases o_proj
    # Mistral: a token attends to the last `sliding_window` positions (itself included).
    # `DenseAttention` honours it; a backend that does not must refuse prompts longer than it.
    sliding_window: int | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_dir(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.is_dir():
            raise NotFound(f"model directory {path} does not exist (--model must name an HF checkpoint directory)")
        file = path / "config.json"
        if not file.is_file():
            raise NotFound(f"{file} not found: an HF checkpoint directory holds config.json")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidArgument(f"{file} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidArgument(f"{file} must hold a JSON object")
        return cls.from_dict(data, where=str(file))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, where: str = "config.json") -> "ModelConfig":
        r = _Reader(d, where)
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise InvalidArgument(
                f"{where}: model_type {model_type!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise InvalidArgument(f"{where}: hidden_act {act!r} is not supported; supported: silu")
        if d.get("mlp_bias"):
            raise InvalidArgument(f"{where}: mlp_bias=true is not supported; supported: false")
        hidden = r.int("hidden_size")
        heads = r.int("num_attention_heads")
        kv_heads = r.int("num_key_value_heads", default=heads)
        if heads % kv_heads:
            raise InvalidArgument(
                f"{where}: num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})"
            )
        head_dim = d.get("head_dim")
        if head_dim is None:
            if hidden % heads:
                raise InvalidArgument(f"{where}: hidden_size ({hidden}) must divide by num_attention_heads ({heads})")
            head_dim = hidden // heads
        else:
            head_dim = r.int("head_dim")
        if head_dim % 2:
            raise InvalidArgument(f"{where}: head_dim must be even for rotary embeddings, got {head_dim}")
        theta, scaling = _rope(d, where)
        attention_bias = bool(d.get("attention_bias", False))
        return cls(
            model_type=model_type,
            vocab_size=r.int("vocab_size"),
            hidden_size=hidden,
            intermediate_size=r.int("intermediate_size"),
            num_layers=r.int("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=r.float("rms_norm_eps", default=1e-6),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=r.int("max_position_embeddings", default=4096),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type == "llama" and attention_bias,
            sliding_window=_sliding_window(d, model_type, where),
            bos_token_id=_optional_id(d.get("bos_token_id"), "bos_token_id", where),
            eos_token_ids=_ids(d.get("eos_token_id"), "eos_token_id", where),
        )


class _Reader:
    def __init__(self, d: Mapping[str, Any], where: str):
        self.d, self.where = d, where

    def int(self, key: str, *, default: int | None = None) -> int:
        value = self.d.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidArgument(f"{self.where}: {key} must be a positive integer, got {value!r}")
        return value

    def float(self, key: str, *, default: float | None = None) -> float:
        value = self.d.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise InvalidArgument(f"{self.where}: {key} must be a positive number, got {value!r}")
        return float(value)


def _rope(d: Mapping[str, Any], where: str) -> tuple[float, RopeScaling | None]:
    """Read rotary settings from either spelling: rope_parameters (tf 5) or rope_theta + rope_scaling (tf 4)."""
    params = d.get("rope_parameters")
    if params is None:
        params = dict(d.get("rope_scaling") or {})
        params.setdefault("rope_theta", d.get("rope_theta", 10000.0))
    if not isinstance(params, dict):
        raise InvalidArgument(f"{where}: rope_parameters/rope_scaling must be an object, got {params!r}")
    r = _Reader(params, f"{where} rope settings")
    theta = r.float("rope_theta", default=d.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise InvalidArgument(
            f"{where}: rope type {rope_type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    if rope_type == "default":
        return theta, None
    factor = r.float("factor")
    if rope_type == "linear":
        return theta, RopeScaling(type="linear", factor=factor)
    if rope_type == "yarn":
        return theta, _yarn(params, r, factor, d, where)
    return theta, RopeScaling(
        type="llama3",
        factor=factor,
        low_freq_factor=r.float("low_freq_factor"),
        high_freq_factor=r.float("high_freq_factor"),
        original_max_position_embeddings=r.int("original_max_position_embeddings"),
    )


def _yarn(params: Mapping[str, Any], r: _Reader, factor: float, d: Mapping[str, Any], where: str) -> RopeScaling:
    """YaRN (Qwen2.5 long context): attention_factor as HF derives it from factor / mscale / mscale_all_dim."""

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if params.get("attention_factor") is not None:
        attention = r.float("attention_factor")
    elif params.get("mscale") and params.get("mscale_all_dim"):
        attention = mscale(factor, r.float("mscale")) / mscale(factor, r.float("mscale_all_dim"))
    else:
        attention = mscale(factor)
    original = params.get("original_max_position_embeddings") or d.get("max_position_embeddings")
    return RopeScaling(
        type="yarn",
        factor=factor,
        original_max_position_embeddings=_Reader({"original_max_position_embeddings": original}, where).int(
            "original_max_position_embeddings"),
        beta_fast=float(params.get("beta_fast") or 32.0),
        beta_slow=float(params.get("beta_slow") or 1.0),
        truncate=bool(params.get("truncate", True)),
        attention_factor=attention,
    )


def _sliding_window(d: Mapping[str, Any], model_type: str, where: str) -> int | None:
    window = d.get("sliding_window")
    if model_type == "qwen2":
        layer_types = d.get("layer_types") or []
        if d.get("use_sliding_window") or "sliding_attention" in layer_types:
            raise InvalidArgument(f"{where}: Qwen2 use_sliding_window=true is not supported; supported: false")
        return None
    if model_type == "llama" or window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise InvalidArgument(f"{where}: sliding_window must be a positive integer or null, got {window!r}")
    return window


def _optional_id(value: Any, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(f"{where}: {key} must be a token id (integer >= 0) or null, got {value!r}")
    return value


def _ids(value: Any, key: str, where: str) -> tuple[int, ...]:
    if value is None:
        return ()
    values = value if isinstance(value, list) else [value]
    return tuple(_optional_id(v, key, where) for v in values)  # type: ignore[misc]
