"""Tokenizer wrapper: special tokens, eos ids from every config file, specials in user text stay text."""

from __future__ import annotations

import pytest

from flint.engine.tokenizer import Tokenizer
from flint.errors import InvalidArgument, NotFound


def test_eos_ids_merge_generation_config_config_and_tokenizer_config(qwen2_checkpoint):
    tok = Tokenizer.from_dir(qwen2_checkpoint)
    assert tok.eos_token_ids == {0, 2}                 # generation_config lists [0, 2]; <|endoftext|> is 0
    assert tok.special_id("<|fim_prefix|>") is not None
    assert not tok.add_bos


def test_llama_style_tokenizer_adds_bos_and_knows_byte_tokens(llama_checkpoint):
    tok = Tokenizer.from_dir(llama_checkpoint)
    assert (tok.bos_token_id, tok.add_bos, tok.eos_token_ids) == (1, True, {2})
    assert tok.is_byte_fallback and tok.is_byte_token(3 + 0xE2)
    assert tok.decode(tok.encode("def f(x):\n    return 'é中'")) == "def f(x):\n    return 'é中'"


def test_special_token_text_in_user_input_is_encoded_as_text(qwen2_checkpoint):
    tok = Tokenizer.from_dir(qwen2_checkpoint)
    ids = tok.encode("a<|fim_middle|>b")
    assert tok.special_id("<|fim_middle|>") not in ids
    assert tok.decode(ids) == "a<|fim_middle|>b"


def test_missing_or_broken_tokenizer_files(tmp_path):
    with pytest.raises(NotFound, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)


def test_decode_id_is_decode_of_that_one_id_for_every_id(llama_checkpoint):
    tok = Tokenizer.from_dir(llama_checkpoint)
    for skip in (True, False):
        for i in range(tok.vocab_size):
            assert tok.decode_id(i, skip_special_tokens=skip) == tok.decode([i], skip_special_tokens=skip), (i, skip)
        assert tok.decode_id(5, skip_special_tokens=skip) == tok.decode([5], skip_special_tokens=skip)   # kept
