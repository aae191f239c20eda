"""Incremental detokenization never splits a character and never loses text; stop strings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flint.engine.detokenizer import IncrementalDetokenizer, StopMatcher
from flint.engine.tokenizer import Tokenizer

TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(list("é中文😀🚀ßλ→ \n\tdef():")),
    ),
    max_size=40,
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=["bytelevel", "bytefallback"])
def tok(request) -> Tokenizer:
    from tokenizers import Tokenizer as HF

    file = request.getfixturevalue(f"{request.param}_tokenizer_file")
    return Tokenizer(HF.from_file(str(file)))


class DecodesEveryStep(Tokenizer):
    """No joined texts: the detokenizer decodes its window at every step."""

    def joined_text(self, token_id: int) -> str:
        return ""


def stream(tok: Tokenizer, ids: list[int], chunks: list[int], **kw) -> list[str]:
    detok = IncrementalDetokenizer(tok, **kw)
    pieces, i, c = [], 0, 0
    while i < len(ids):
        n = max(1, chunks[c % len(chunks)]) if chunks else 1
        pieces.append(detok.add(ids[i] if n == 1 else ids[i : i + n]))   # one id: an int, as a decode step adds it
        i, c = i + n, c + 1
    pieces.append(detok.flush())
    return pieces


@SETTINGS
@given(text=TEXT, chunks=st.lists(st.integers(1, 4), max_size=6))
def test_pieces_of_encoded_text_concatenate_to_full_decode_without_broken_chars(tok, text, chunks):
    ids = tok.encode(text)
    pieces = stream(tok, ids, chunks)
    assert "".join(pieces) == tok.decode(ids)
    if "\ufffd" not in text:
        assert not any("\ufffd" in p for p in pieces)   # no piece ends inside a character


@SETTINGS
@given(data=st.data(), chunks=st.lists(st.integers(1, 3), max_size=6))
def test_random_token_ids_concatenate_to_full_decode(tok, data, chunks):
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=30))
    for skip in (True, False):
        pieces = stream(tok, ids, chunks, skip_special_tokens=skip)
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=skip)


@SETTINGS
@given(data=st.data(), text=TEXT, chunks=st.lists(st.integers(1, 3), max_size=4), stop=st.lists(TEXT, max_size=2))
def test_joined_texts_give_the_pieces_of_decoding_every_step(tok, data, text, chunks, stop):
    # Encoded text (multi-byte characters, byte runs) mixed with random ids (special tokens, bytes that form no
    # character), one id per step as in decoding and in chunks, with and without skipping specials.
    decoding = DecodesEveryStep(tok.hf)
    any_id = st.one_of(st.integers(0, tok.vocab_size - 1), st.sampled_from(sorted(tok.special_ids)))
    ids = data.draw(st.permutations(tok.encode(text) + data.draw(st.lists(any_id, max_size=12))))
    context = data.draw(st.lists(any_id, max_size=3))
    for skip in (True, False):
        for steps in ([1], chunks):
            kw = dict(skip_special_tokens=skip, context_ids=context, stop=[s for s in stop if s])
            assert stream(tok, ids, steps, **kw) == stream(decoding, ids, steps, **kw)


def test_a_bytelevel_tokenizer_streams_code_mostly_without_decoding(bytelevel_tokenizer_file):
    from tokenizers import Tokenizer as HF

    tok = Tokenizer(HF.from_file(str(bytelevel_tokenizer_file)))
    decode = tok.decode
    for text, decodes in (("def area(r):\n    return 3.14159 * r * r\n", 1),   # the first token's only
                          ("# é 中文 😀\n", None)):                            # characters split over tokens
        ids, calls = tok.encode(text), []
        tok.decode = lambda *a, **kw: calls.append(a) or decode(*a, **kw)
        detok = IncrementalDetokenizer(tok)
        pieces = [detok.add(i) for i in ids]
        assert len(calls) == decodes if decodes else len(calls) > 1
        assert "".join(pieces) + detok.flush() == text


@SETTINGS
@given(prompt=TEXT, completion=TEXT)
def test_context_ids_give_in_context_text_of_first_tokens(tok, prompt, completion):
    prompt_ids, gen_ids = tok.encode("x = 1" + prompt.replace("\ufffd", "")), tok.encode(completion)
    if tok.decode(prompt_ids).endswith("\ufffd"):
        return
    pieces = stream(tok, gen_ids, [1], context_ids=prompt_ids)
    context = prompt_ids[-6:]
    assert "".join(pieces) == tok.decode(context + gen_ids)[len(tok.decode(context)):]


def test_multibyte_character_waits_for_its_last_byte(bytelevel_tokenizer_file):
    from tokenizers import Tokenizer as HF

    tok = Tokenizer(HF.from_file(str(bytelevel_tokenizer_file)))
    alphabet = {c: tok.hf.token_to_id(c) for c in ("ð", "Ł", "ĺ", "Ģ")}  # ByteLevel chars of b"\xf0\x9f\x98\x80"
    ids = [tok.encode("a")[0], *alphabet.values()]
    detok = IncrementalDetokenizer(tok)
    assert [detok.add(i) for i in ids] == ["a", "", "", "", "😀"]
    assert detok.flush() == ""


def test_unfinished_character_is_released_by_flush(bytelevel_tokenizer_file):
    from tokenizers import Tokenizer as HF

    tok = Tokenizer(HF.from_file(str(bytelevel_tokenizer_file)))
    detok = IncrementalDetokenizer(tok)
    assert detok.add(tok.hf.token_to_id("ð")) == ""
    assert detok.flush() == "\ufffd"


def test_stop_string_ends_generation_and_is_not_emitted(bytelevel_tokenizer_file):
    from tokenizers import Tokenizer as HF

    tok = Tokenizer(HF.from_file(str(bytelevel_tokenizer_file)))
    ids = tok.encode("return x\n```\nmore text")
    detok = IncrementalDetokenizer(tok, stop=["\n```"])
    out = "".join(detok.add(i) for i in ids) + detok.flush()
    assert out == "return x"
    assert detok.stopped and detok.stop_string == "\n```"
    assert detok.add(tok.encode("y")) == ""


def test_stop_matcher_holds_back_possible_start_until_resolved():
    m = StopMatcher(["STOP", "\n\n"])
    assert m.feed("abc ST") == "abc "      # "ST" could start "STOP"
    assert m.feed("O") == ""
    assert m.feed("NE") == "STONE"         # resolved: not a stop string
    assert m.feed("x\n") == "x"
    assert m.feed("\ny") == ""             # stop string "\n\n" found
    assert m.stopped and m.stop_string == "\n\n"
    assert m.flush() == ""


def test_stop_matcher_earliest_stop_wins_and_flush_returns_held_text():
    m = StopMatcher(["bc", "abcd"])
    assert m.feed("xab") == "x"            # "ab" could start "abcd"; "b" could start "bc"
    assert m.flush() == "ab"
    m = StopMatcher(["cd", "bcd"])
    assert m.feed("abcde") == "a"
    assert m.stop_string == "bcd"


def test_stop_matcher_stops_at_the_stop_string_that_completes_first_whatever_the_chunking():
    # "c" completes at 3, "aca" (starting earlier) only at 4: whole or in chunks, the output is "aa".
    for chunks in (["aaca"], ["aac", "a"]):
        m = StopMatcher(["c", "aca"])
        out = "".join(m.feed(c) for c in chunks) + m.flush()
        assert (out, m.stop_string) == ("aa", "c")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet="ab\nc", max_size=30), stops=st.lists(st.text(alphabet="ab\nc", min_size=1, max_size=4),
       max_size=3), cuts=st.lists(st.integers(0, 30), max_size=8))
def test_stop_matcher_output_is_text_up_to_the_first_stop_whatever_the_chunking(text, stops, cuts):
    m = StopMatcher(stops)
    bounds = sorted({0, len(text), *[c for c in cuts if c <= len(text)]})
    out = "".join(m.feed(text[a:b]) for a, b in zip(bounds, bounds[1:])) + m.flush()
    # Generation stops where the first stop string completes: the earliest end, then the earliest start.
    hits = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    assert out == (text[: min(hits)[1]] if hits else text)
    assert m.stopped == bool(hits)
