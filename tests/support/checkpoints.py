"""Fixtures that make tiny HF-format checkpoints (made here, never downloaded).

Session-scoped, so each checkpoint is written once per test run:
- `llama_checkpoint`: Llama 3 style (llama3 rope scaling), GQA 4/2, untied, 3 layers,
  byte-fallback tokenizer with CodeLlama FIM tokens;
- `llama_sharded_checkpoint`: Llama with linear rope scaling and attention_bias, saved in
  several safetensors files (model.safetensors.index.json);
- `qwen2_checkpoint`: Qwen2 (QKV bias), YaRN rope scaling (as Qwen2.5 for 128K), tied
  embeddings, ByteLevel tokenizer with Qwen2.5-Coder FIM tokens;
- `mistral_checkpoint`: Mistral, GQA 4/1, sliding_window=8, byte-fallback tokenizer;
- `demo_checkpoint`: demo-style (flint.engine.demo.make_checkpoint) but tiny: fast to load
  for serving tests;
- `bytelevel_tokenizer_file` / `bytefallback_tokenizer_file`: the tokenizer.json files.
All weights (incl. norms and biases) are random, so every parameter matters in logits tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

VOCAB = 512
DIMS = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, vocab_size=VOCAB, rms_norm_eps=1e-5)
CODELLAMA_FIM = ("▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>")


def build_bytelevel_tokenizer():
    from flint.engine.demo import train_tokenizer

    return train_tokenizer(VOCAB - 12, corpus_bytes=150_000)


def build_bytefallback_tokenizer(extra_special: tuple[str, ...] = CODELLAMA_FIM):
    """A Llama-2-style SentencePiece BPE: '▁' for spaces, <0xHH> byte fallback, Strip decoder."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from flint.engine.demo import python_source_corpus

    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    n_fixed = 3 + 256 + len(extra_special)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - n_fixed, show_progress=False)
    trainer_tok.train_from_iterator(python_source_corpus(150_000), trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    merges = [m for m in merges if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0),
    ])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in extra_special])
    assert tok.get_vocab_size() <= VOCAB
    return tok


def _randomize(model, seed: int) -> None:
    """Random values for every parameter (HF init leaves norms at 1 and biases at 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1.0 + 0.1 * noise if "norm" in name else 0.08 * noise)


def save_hf_checkpoint(path: Path, config, tokenizer, *, seed: int = 0, max_shard_size: str | None = None,
                       tokenizer_config: dict | None = None) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(model, seed)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(path, **kwargs)
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config or {}))
    return path


@pytest.fixture(scope="session")
def bytelevel_tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok-bytelevel") / "tokenizer.json"
    build_bytelevel_tokenizer().save(str(path))
    return path


@pytest.fixture(scope="session")
def bytefallback_tokenizer_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok-bytefallback") / "tokenizer.json"
    build_bytefallback_tokenizer().save(str(path))
    return path


def _tokenizer(file: Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(file))


_LLAMA_TOK_CONFIG = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}


@pytest.fixture(scope="session")
def llama_checkpoint(tmp_path_factory, bytefallback_tokenizer_file) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(
        **DIMS, num_hidden_layers=3, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 64},
        rope_theta=500000.0,
    )
    return save_hf_checkpoint(tmp_path_factory.mktemp("llama"), config, _tokenizer(bytefallback_tokenizer_file),
                              seed=1, tokenizer_config=_LLAMA_TOK_CONFIG)


@pytest.fixture(scope="session")
def llama_sharded_checkpoint(tmp_path_factory, bytefallback_tokenizer_file) -> Path:
    from transformers import LlamaConfig

    config = LlamaConfig(
        **DIMS, num_hidden_layers=2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
        attention_bias=True, rope_scaling={"rope_type": "linear", "factor": 2.0},
    )
    path = save_hf_checkpoint(tmp_path_factory.mktemp("llama-sharded"), config,
                              _tokenizer(bytefallback_tokenizer_file), seed=2, max_shard_size="100KB",
                              tokenizer_config=_LLAMA_TOK_CONFIG)
    assert (path / "model.safetensors.index.json").is_file()
    return path


@pytest.fixture(scope="session")
def qwen2_checkpoint(tmp_path_factory, bytelevel_tokenizer_file) -> Path:
    from transformers import Qwen2Config

    config = Qwen2Config(**DIMS, num_hidden_layers=2, tie_word_embeddings=True, eos_token_id=0,
                         rope_theta=1000000.0, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                             "original_max_position_embeddings": 128})
    path = tmp_path_factory.mktemp("qwen2")
    save_hf_checkpoint(path, config, _tokenizer(bytelevel_tokenizer_file), seed=3,
                       tokenizer_config={"eos_token": "<|endoftext|>", "add_bos_token": False})
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    return path


@pytest.fixture(scope="session")
def mistral_checkpoint(tmp_path_factory, bytefallback_tokenizer_file) -> Path:
    from transformers import MistralConfig

    dims = dict(DIMS, num_key_value_heads=1)
    config = MistralConfig(**dims, num_hidden_layers=2, sliding_window=8, tie_word_embeddings=False,
                           bos_token_id=1, eos_token_id=2)
    return save_hf_checkpoint(tmp_path_factory.mktemp("mistral"), config, _tokenizer(bytefallback_tokenizer_file),
                              seed=4, tokenizer_config=_LLAMA_TOK_CONFIG)


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory, bytelevel_tokenizer_file) -> Path:
    """Demo-format checkpoint (Qwen2, Qwen FIM tokens), tiny: loads in milliseconds."""
    from flint.engine.demo import make_checkpoint

    return make_checkpoint(
        tmp_path_factory.mktemp("demo-tiny"), layers=2, hidden=64, heads=4, kv_heads=2, intermediate=128,
        vocab_size=VOCAB, max_position_embeddings=4096, seed=5, tokenizer_from=bytelevel_tokenizer_file.parent,
    )


CHECKPOINT_FIXTURES = ("llama_checkpoint", "llama_sharded_checkpoint", "qwen2_checkpoint", "mistral_checkpoint",
                       "demo_checkpoint")
