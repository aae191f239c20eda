"""The demo checkpoint: made once, atomically, loadable by transformers and flint, with Qwen FIM tokens."""

from __future__ import annotations

import json
import threading

import pytest
import torch

from flint.engine.demo import DEMO_VERSION, ensure_demo_checkpoint
from flint.engine.fim import build_prompt
from flint.engine.loader import load_model
from flint.engine.model.dense import DenseAttention
from flint.engine.tokenizer import Tokenizer
from flint.engine.types import GenerateRequest

REQ_TEXT = "def main():\n    return 'héllo' + str(1)\n"
FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
         "README.md"}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return ensure_demo_checkpoint(tmp_path_factory.mktemp("cache"))


def test_demo_has_hf_files_and_says_it_is_not_meaningful(demo_dir):
    assert demo_dir.name == DEMO_VERSION and FILES <= {p.name for p in demo_dir.iterdir()}
    assert "NOT meaningful" in (demo_dir / "README.md").read_text()
    config = json.loads((demo_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("qwen2", 4, 256)


def test_second_call_reuses_the_cached_copy(demo_dir):
    before = (demo_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_checkpoint(demo_dir.parent) == demo_dir
    assert (demo_dir / "model.safetensors").stat().st_mtime_ns == before


def test_demo_loads_in_transformers_and_flint_with_equal_logits_and_tokens(demo_dir):
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.from_dir(demo_dir)
    prompt = build_prompt(tok, GenerateRequest(request_id="r", prefix="def main():\n    ", suffix="\n"))
    assert prompt.template == "qwen" and tok.eos_token_ids == {tok.special_id("<|endoftext|>")}
    ids = list(prompt.token_ids)
    hf = AutoModelForCausalLM.from_pretrained(demo_dir, dtype=torch.float32)
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(demo_dir).encode(REQ_TEXT) == tok.encode(REQ_TEXT)
    model = load_model(demo_dir)
    attn = DenseAttention.for_model(model)
    attn.add_sequence(0, len(ids))
    got = model.compute_logits(model(torch.tensor(ids), attn.begin_step([(0, len(ids))]), attn))
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-4)


def test_racing_creators_end_with_one_valid_copy(tmp_path):
    results, errors = [], []

    def make() -> None:
        try:
            results.append(ensure_demo_checkpoint(tmp_path, layers=1, hidden=64, heads=2, kv_heads=1,
                                                  intermediate=64, vocab_size=600, corpus_bytes=50_000))
        except Exception as exc:  # noqa: BLE001 - the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=make) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(set(results)) == 1
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]   # no temp dirs left behind
    assert load_model(results[0]).config.num_layers == 1


def test_long_context_parameter(tmp_path, bytelevel_tokenizer_file):
    from flint.engine.demo import make_checkpoint

    path = make_checkpoint(tmp_path / "long", layers=1, hidden=64, heads=2, kv_heads=1, intermediate=64,
                           vocab_size=512, max_position_embeddings=131072, tokenizer_from=bytelevel_tokenizer_file.parent)
    assert load_model(path).config.max_position_embeddings == 131072
