"""Document positions (LSP line/character in UTF-16 or UTF-8) and edits keep the line index exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flint.doctext import DocText
from flint.errors import InvalidArgument

PIECES = st.sampled_from(["a", "bc", " ", "\n", "\r\n", "\r", "é", "中", "😀", "\t", "x = 1\n"])
TEXT = st.lists(PIECES, max_size=30).map("".join)


def _reference_line_starts(text: str) -> list[int]:
    starts, i = [0], 0
    while i < len(text):
        if text[i] == "\r" and i + 1 < len(text) and text[i + 1] == "\n":
            i += 1
        if text[i] in "\r\n":
            starts.append(i + 1)
        i += 1
    return starts


@settings(max_examples=300, deadline=None)
@given(text=TEXT, edits=st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1), TEXT), max_size=8))
def test_line_index_after_edits_equals_a_fresh_scan(text, edits):
    doc = DocText(text)
    for a, b, repl in edits:
        start, end = sorted((int(a * len(doc.text)), int(b * len(doc.text))))
        doc = doc.apply(start, end, repl)
        text = text[:start] + repl + text[end:]
        assert doc.text == text
        assert doc._starts.tolist() == _reference_line_starts(text)


def test_utf16_and_utf8_positions_count_their_units():
    text = "a😀b\nxé中y\n"
    u16, u8 = DocText(text), DocText(text, "utf-8")
    assert u16.offset(0, 3) == 2 and u8.offset(0, 5) == 2          # after the emoji: 2 UTF-16 units, 4 bytes
    assert u16.offset(1, 3) == text.index("y") and u8.offset(1, 6) == text.index("y")
    assert u16.position(text.index("y")) == (1, 3) and u8.position(text.index("y")) == (1, 6)
    with pytest.raises(InvalidArgument, match="falls inside a character"):
        u16.offset(0, 2)
    with pytest.raises(InvalidArgument, match="past the end of line 1, which is 4 UTF-16 code units long"):
        u16.offset(1, 5)
    with pytest.raises(InvalidArgument, match="line 3 is outside the document, which has 3 lines"):
        u16.offset(3, 0)
    with pytest.raises(InvalidArgument, match="position encoding 'utf-32'"):
        DocText(text, "utf-32")
