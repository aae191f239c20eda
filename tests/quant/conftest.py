"""A briefly trained checkpoint for the quantization tests.

The shared test checkpoints have random weights: every matrix is Gaussian noise, so the ~9% relative
error of any 4-bit grid on a Gaussian goes straight into the logits (int4 cosine ~0.9 there). Trained
weights have the structure real checkpoints have, and that is what quantization quality is about.
150 AdamW steps on the Python corpus (about 12 s on one core) take the loss from 6.2 to about 2.5.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, bytefallback_tokenizer_file) -> Path:
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    from flint.engine.demo import python_source_corpus
    from support.checkpoints import DIMS

    tok = Tokenizer.from_file(str(bytefallback_tokenizer_file))
    ids = torch.tensor(tok.encode("".join(python_source_corpus(200_000))).ids)
    config = LlamaConfig(**DIMS, num_hidden_layers=2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # small matrices: one thread is fastest, and it does not fight the other tests
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seq, batch = 64, 16
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=g)
        x = torch.stack([ids[s: s + seq] for s in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    assert loss.item() < 3.5, f"training did not converge (loss {loss.item():.2f})"
    path = tmp_path_factory.mktemp("trained-llama")
    model.save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text('{"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": true}')
    return path
