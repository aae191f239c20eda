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


def test_joined_texts_of_two_tokens_are_their_decode(bytelevel_tokenizer_file, llama_checkpoint):
    from tokenizers import Tokenizer as HF

    tok = Tokenizer(HF.from_file(str(bytelevel_tokenizer_file)))
    joined = {i: tok.joined_text(i) for i in range(tok.vocab_size)}
    plain = [i for i, t in joined.items() if t]
    assert len(plain) > tok.vocab_size / 2
    assert not any(joined[i] for i in tok.special_ids)
    assert any("\ufffd" in tok.decode([i]) for i in range(tok.vocab_size) if not joined[i])   # partial characters
    for a in plain:
        for b in plain:
            assert tok.decode([a, b]) == joined[a] + joined[b], (a, b)
    sentencepiece = Tokenizer.from_dir(llama_checkpoint)      # Metaspace and byte fallback: always decoded
    assert not any(sentencepiece.joined_text(i) for i in range(sentencepiece.vocab_size))
