"""Document text: LSP-style positions (line, character) to string offsets, and applying edits.

A client names places in a document the way the Language Server Protocol does:
a zero-based line and a character offset in that line counted in UTF-16 code
units (the default, as LSP) or in UTF-8 bytes (chosen when the document is
opened). Python strings index code points, so every position is converted
once, here, and everything after works with code-point offsets.

`DocText` keeps the text with the offsets where its lines start, updated per
edit from the edit alone (a numpy shift of the later line starts), so a
keystroke in a 480K-character file does not rescan the file.

Line endings: "\\n", "\\r\\n" and "\\r" end a line (as LSP). A character past
the end of its line, or a line past the last, is an error that names the
line's length: clients must send positions inside the document.

Public API (stable):
    ENCODINGS = ("utf-16", "utf-8")
    DocText(text, encoding="utf-16"); .text; .offset(line, character) -> int; .position(offset) -> (line, char)
    .apply(start, end, replacement) -> DocText   (code-point offsets; a new object)
    Edit(start, end, text): a normalized edit in code-point offsets
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from flint.errors import InvalidArgument

ENCODINGS = ("utf-16", "utf-8")
_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Edit:
    start: int     # code-point offsets into the text before the edit
    end: int
    text: str


class DocText:
    def __init__(self, text: str, encoding: str = "utf-16", *, _line_starts: np.ndarray | None = None):
        if encoding not in ENCODINGS:
            raise InvalidArgument(f"position encoding {encoding!r} is not supported; use one of {', '.join(ENCODINGS)}")
        self.text = text
        self.encoding = encoding
        self._starts = _line_starts if _line_starts is not None else _line_starts_of(text, 0)

    @property
    def line_count(self) -> int:
        return len(self._starts)

    def offset(self, line: int, character: int) -> int:
        """Code-point offset of an LSP position."""
        if not 0 <= line < len(self._starts):
            raise InvalidArgument(f"line {line} is outside the document, which has {len(self._starts)} lines "
                                  "(lines count from 0)")
        begin = int(self._starts[line])
        end = int(self._starts[line + 1]) if line + 1 < len(self._starts) else len(self.text)
        content = self.text[begin:end].rstrip("\r\n")
        if content.isascii():
            units = character
        else:
            units = _code_points(content, character, self.encoding, line)
        if not 0 <= units <= len(content):
            raise InvalidArgument(f"character {character} is past the end of line {line}, which is "
                                  f"{_length(content, self.encoding)} {self._unit_name()} long")
        return begin + units

    def position(self, offset: int) -> tuple[int, int]:
        line = int(np.searchsorted(self._starts, offset, side="right")) - 1
        head = self.text[int(self._starts[line]):offset]
        return line, _length(head, self.encoding)

    def apply(self, start: int, end: int, replacement: str) -> "DocText":
        if not 0 <= start <= end <= len(self.text):
            raise InvalidArgument(f"edit range [{start}, {end}) is outside the document of {len(self.text)} "
                                  "characters")
        text = self.text[:start] + replacement + self.text[end:]
        # Re-scan only from the line before the edit's line to the first line start past end + 1 (so a
        # "\r" | "\n" pair split or joined at either edge is seen); later line starts shift by the length change.
        first = max(0, int(np.searchsorted(self._starts, start, side="right")) - 2)
        last = int(np.searchsorted(self._starts, end + 1, side="right"))
        lo = int(self._starts[first])
        hi = int(self._starts[last]) if last < len(self._starts) else len(self.text)
        delta = len(replacement) - (end - start)
        middle = _line_starts_of(text[lo:hi + delta], lo)
        later = self._starts[last:] + delta
        if len(later):
            middle = middle[:-1]   # the region ends with a line end: its last start is later[0]
        return DocText(text, self.encoding, _line_starts=np.concatenate([self._starts[:first], middle, later]))

    def _unit_name(self) -> str:
        return "UTF-16 code units" if self.encoding == "utf-16" else "UTF-8 bytes"


def _line_starts_of(text: str, base: int) -> np.ndarray:
    return np.asarray([base] + [base + m.end() for m in _LINE_END.finditer(text)], dtype=np.int64)


def _length(s: str, encoding: str) -> int:
    if s.isascii():
        return len(s)
    return len(s.encode("utf-16-le")) // 2 if encoding == "utf-16" else len(s.encode("utf-8"))


def _code_points(content: str, units: int, encoding: str, line: int) -> int:
    """Code points of `content` covered by its first `units` UTF-16 units / UTF-8 bytes."""
    count = 0
    for i, ch in enumerate(content):
        if count == units:
            return i
        count += (2 if ord(ch) > 0xFFFF else 1) if encoding == "utf-16" else len(ch.encode("utf-8"))
        if count > units:
            raise InvalidArgument(f"character {units} of line {line} falls inside a character: positions must "
                                  f"fall between characters ({encoding})")
    return len(content) if count == units else len(content) + 1
