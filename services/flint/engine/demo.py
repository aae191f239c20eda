"""The demo checkpoint: a tiny random Qwen2 model so every code path runs on a fresh machine.

With no `--model`, flint serves `ensure_demo_checkpoint()`: made once and
cached under the user cache directory (`flint.env.cache_dir()/demo-v3`). It is
an ordinary HF checkpoint directory (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, generation_config.json, README.md) with
RANDOM weights: its output is not meaningful, only its shape and speed are.
The BPE tokenizer is trained with `tokenizers` on a few MB of the local Python
standard library and carries the Qwen2.5-Coder FIM special tokens, so FIM
templates, detokenization and stop tokens behave as with a real coder model.

Public API (stable):
    ensure_demo_checkpoint(cache_dir=None) -> Path
    make_checkpoint(path, *, layers, hidden, heads, kv_heads, intermediate, vocab_size,
                    max_position_embeddings, seed, tie_word_embeddings, tokenizer_from,
                    architecture="qwen2" | "llama") -> Path
    train_tokenizer(vocab_size, *, corpus_bytes) -> tokenizers.Tokenizer
    DEMO_NOTE (what `flint serve` prints about the demo model)
Creation is atomic (temp dir + rename), so racing processes end with one valid copy.
"""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

import torch

DEMO_VERSION = "demo-v3"   # bump when the files made change
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
_ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
DEMO_NOTE = (
    "flint is serving its built-in demo model: random weights, so completions are not meaningful. "
    "Pass --model PATH with an HF checkpoint directory (e.g. Qwen2.5-Coder) for real output."
)


def ensure_demo_checkpoint(cache_dir: str | Path | None = None, **overrides) -> Path:
    """Path of the cached demo checkpoint, made on first use (a few seconds)."""
    from flint import env

    root = Path(cache_dir) if cache_dir is not None else env.cache_dir()
    target = root / (DEMO_VERSION if not overrides else f"{DEMO_VERSION}-{_suffix(overrides)}")
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=root))
    try:
        make_checkpoint(tmp, **overrides)
        try:
            os.rename(tmp, target)   # atomic; fails if another process got there first
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _suffix(overrides: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in sorted(overrides.items()) if not isinstance(v, (Path, str)))


def make_checkpoint(
    path: str | Path,
    *,
    layers: int = 4,
    hidden: int = 256,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 704,
    vocab_size: int = 8192,
    max_position_embeddings: int = 131072,
    rope_theta: float = 1_000_000.0,
    seed: int = 0,
    tie_word_embeddings: bool = True,
    tokenizer_from: str | Path | None = None,
    corpus_bytes: int = 3_000_000,
    architecture: str = "qwen2",
) -> Path:
    """Write a random Qwen2 (or Llama: no q/k/v bias) HF checkpoint with a trained BPE tokenizer to `path`.

    `tokenizer_from` copies tokenizer.json from an existing checkpoint instead of
    training one (seconds saved when tests/benchmarks make several models).
    The model's vocab is `max(vocab_size, tokenizer size)`.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_from is not None:
        shutil.copy(Path(tokenizer_from) / "tokenizer.json", path / "tokenizer.json")
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    else:
        tok = train_tokenizer(vocab_size, corpus_bytes=corpus_bytes)
        tok.save(str(path / "tokenizer.json"))
    vocab = max(vocab_size, tok.get_vocab_size())
    eos = tok.token_to_id("<|endoftext|>")
    if architecture not in _ARCHITECTURES:
        raise ValueError(f"architecture must be one of {', '.join(_ARCHITECTURES)}, got {architecture!r}")
    config = {
        "architectures": [_ARCHITECTURES[architecture]],
        "model_type": architecture,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-6,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": tie_word_embeddings,
        "vocab_size": vocab,
        "bos_token_id": None,
        "eos_token_id": eos,
        "torch_dtype": "float32",
        "flint_demo": True,
    }
    _write_json(path / "config.json", config)
    _write_json(path / "generation_config.json", {"eos_token_id": [eos], "bos_token_id": None})
    _write_json(path / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "add_bos_token": False,
        "model_max_length": max_position_embeddings,
        "additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:]),
    })
    _save_random_weights(path / "model.safetensors", config, seed)
    (path / "README.md").write_text(
        "# flint demo checkpoint\n\nRandom weights (seed %d): output is NOT meaningful.\n"
        "Made by flint.engine.demo so every code path runs without downloading a model.\n" % seed
    )
    return path


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _save_random_weights(file: Path, c: dict, seed: int) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    d, inter, hd = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd

    def rand(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(shape, generator=g) * std

    t = {"model.embed_tokens.weight": rand(c["vocab_size"], d), "model.norm.weight": torch.ones(d)}
    bias = c["model_type"] == "qwen2"
    if not c["tie_word_embeddings"]:
        t["lm_head.weight"] = rand(c["vocab_size"], d)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t.update({p + "input_layernorm.weight": torch.ones(d), p + "post_attention_layernorm.weight": torch.ones(d)})
        for name, rows in (("q", q), ("k", kv), ("v", kv)):
            t[p + f"self_attn.{name}_proj.weight"] = rand(rows, d)
            if bias:                            # Qwen2; drawn in this order so a seed keeps its weights
                t[p + f"self_attn.{name}_proj.bias"] = rand(rows)
        t.update({
            p + "self_attn.o_proj.weight": rand(d, q),
            p + "mlp.gate_proj.weight": rand(inter, d),
            p + "mlp.up_proj.weight": rand(inter, d),
            p + "mlp.down_proj.weight": rand(d, inter),
        })
    save_file(t, str(file), metadata={"format": "pt"})


def python_source_corpus(max_bytes: int) -> list[str]:
    """Local standard-library .py files, sorted, up to about `max_bytes` (deterministic per Python install)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts, total = [], 0
    for file in sorted(root.glob("*.py")):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        texts.append(text[: max_bytes - total])
        total += len(texts[-1])
        if total >= max_bytes:
            break
    if not texts:  # a Python without its source files: still make a usable tokenizer
        texts = ["def main():\n    return 0\n"]
    return texts


# Qwen2's pre-tokenizer split (digits one by one, newlines grouped), so transformers' Qwen2Tokenizer,
# which imposes it on qwen2 checkpoints, encodes exactly as flint does.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tokenizer(vocab_size: int, *, corpus_bytes: int = 3_000_000,
                    special_tokens: tuple[str, ...] = QWEN_SPECIAL_TOKENS):
    """A ByteLevel BPE tokenizer (Qwen2 style) trained on local Python source."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(python_source_corpus(corpus_bytes), trainer=trainer)
    return tok


def main(argv: list[str] | None = None) -> int:
    """`python -m flint.engine.demo [--cache-dir DIR]`: make (or find) the demo checkpoint, print its path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flint.engine.demo", description=main.__doc__)
    parser.add_argument("--cache-dir", default=None, help="default: flint's user cache directory")
    parser.add_argument("--max-position-embeddings", type=int, default=None)
    args = parser.parse_args(argv)
    overrides = {}
    if args.max_position_embeddings:
        overrides["max_position_embeddings"] = args.max_position_embeddings
    print(ensure_demo_checkpoint(args.cache_dir, **overrides))
    print(DEMO_NOTE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
