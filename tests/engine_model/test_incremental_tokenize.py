"""Incremental tokenization equals whole-text tokenization after any sequence of edits.

Property tests (hypothesis): random edit sequences on code-like text, on the demo's byte-level BPE
(Qwen2/GPT-2 style regex pre-tokenizer) and on a SentencePiece-style BPE with byte fallback and no
pre-tokenizer (Llama 2 style), both made by tests/support/checkpoints.py.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flint.engine.incremental import IncrementalTokenizer
from flint.engine.tokenizer import Tokenizer
from support.checkpoints import build_bytefallback_tokenizer, build_bytelevel_tokenizer

_TOKENIZERS: dict[str, Tokenizer] = {}


def _tokenizer(kind: str) -> Tokenizer:
    if kind not in _TOKENIZERS:
        build = build_bytelevel_tokenizer if kind == "bytelevel" else build_bytefallback_tokenizer
        _TOKENIZERS[kind] = Tokenizer(build())
    return _TOKENIZERS[kind]


SEED_TEXT = (
    "import os\n\n\nclass Box:\n    def __init__(self, x: int = 42) -> None:\n        self.x = x  # é中\n\n"
    "    def area(self):\n        return self.x ** 2\t\n\n\ndef main():\n    print('hello,   world')\n"
)
# Characters that stress pre-tokenizers and merges: spaces/tabs/newlines runs, digits, quotes, unicode.
ALPHABET = st.sampled_from(list("aaeeex_ (){}:.,'\"#=\n\n\t  0123456789") + ["é", "中", "😀", "\r\n", "    ", " " * 17, "'s"])
TEXT = st.lists(ALPHABET, max_size=12).map("".join)


@st.composite
def edits(draw, max_edits: int = 25):
    out = []
    length = len(SEED_TEXT)
    for _ in range(draw(st.integers(1, max_edits))):
        start = draw(st.integers(0, length))
        end = draw(st.integers(start, min(length, start + draw(st.sampled_from([0, 1, 1, 3, 20])))))
        repl = draw(TEXT)
        out.append((start, end, repl))
        length += len(repl) - (end - start)
    return out


@pytest.mark.parametrize("kind", ["bytelevel", "bytefallback"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=edits(), cursor_frac=st.floats(0, 1))
def test_edit_sequence_tokens_equal_whole_text_tokens(kind, sequence, cursor_frac):
    tok = _tokenizer(kind)
    inc = IncrementalTokenizer(tok)
    doc = inc.full(SEED_TEXT)
    text = SEED_TEXT
    for start, end, repl in sequence:
        doc = inc.edit(doc, start, end, repl)
        text = text[:start] + repl + text[end:]
        assert doc.text == text
        assert doc.token_ids() == tok.encode(text, continuation=True)
    cursor = int(cursor_frac * len(text))
    prefix, suffix = inc.split(doc, cursor)
    assert prefix == tok.encode(text[:cursor], continuation=True)
    assert suffix == tok.encode(text[cursor:], continuation=True)


def test_one_character_edit_reencodes_a_window_not_the_text():
    tok = _tokenizer("bytelevel")
    inc = IncrementalTokenizer(tok)
    text = SEED_TEXT * 200
    doc = inc.full(text)
    mid = len(text) // 2
    before = inc.stats.reencoded_chars
    doc = inc.edit(doc, mid, mid, "x")
    assert inc.stats.reencoded_chars - before < 200
    assert inc.stats.full == 0
    assert doc.token_ids() == tok.encode(text[:mid] + "x" + text[mid:], continuation=True)


@pytest.mark.parametrize("max_margin, grown, full", [(256, 1, 0), (4, 0, 1)])
def test_edit_whose_effect_is_not_local_grows_the_window_or_reencodes_and_counts_it(max_margin, grown, full):
    tok = _tokenizer("bytelevel")
    inc = IncrementalTokenizer(tok, margin_tokens=2, max_margin_tokens=max_margin)
    text = "x = 1\n" + " " * 301 + "y\n"   # one run of spaces: BPE merges it from its left end, so one
    doc = inc.full(text)                   # more space at the left changes the tokens at its right end
    doc = inc.edit(doc, 6, 6, " ")
    assert doc.token_ids() == tok.encode(text[:6] + " " + text[6:], continuation=True)
    assert (inc.stats.grown, inc.stats.full) == (grown, full)


def test_edit_outside_the_text_is_rejected():
    inc = IncrementalTokenizer(_tokenizer("bytelevel"))
    with pytest.raises(ValueError, match="outside"):
        inc.edit(inc.full("abc"), 2, 5, "")
