"""Incremental detokenization and stop strings.

`IncrementalDetokenizer` turns generated token ids into text pieces as they
arrive. Two promises, both property-tested:
- no piece ends inside a UTF-8 character (a multi-byte character split over
  byte tokens waits for its last byte);
- nothing is lost: the pieces plus `flush()` equal `tokenizer.decode(all ids)`.

How: decode a short window of ids twice, up to the last "clean" boundary and
to the end, and emit the difference (the window keeps leading-space rules of
SentencePiece decoders right). A boundary is clean when the text up to it
does not end in U+FFFD (an incomplete character) and, for byte-fallback
tokenizers, the last token is not a <0xHH> byte token (a later invalid byte
turns the whole byte run into U+FFFDs). Cost per token: one or two decodes
of a few ids, independent of the sequence length; none for a ByteLevel
tokenizer's tokens of whole characters (`Tokenizer.joined_text`).

`StopMatcher` holds back text that could be the start of a stop string until
it is resolved; a stop string ends generation and is not emitted.

Public API (stable):
    IncrementalDetokenizer(tokenizer, *, stop=(), context_ids=(), skip_special_tokens=True)
        .add(ids: int | Iterable[int]) -> str   text released by these ids ("" if none)
        .flush() -> str                        the held text, at the end of generation
        .stopped -> bool                        a stop string was seen; later ids are ignored
        .stop_string -> str | None
    StopMatcher(stop).feed(text) -> str; .flush() -> str; .stopped
"""

from __future__ import annotations

from typing import Iterable

from flint.engine.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        stop: Iterable[str] = (),
        context_ids: Iterable[int] = (),
        skip_special_tokens: bool = True,
    ):
        """`context_ids`: the last few prompt ids, so the first generated token decodes in context
        (e.g. SentencePiece's "▁x" -> " x" after code, not the start-of-text "x"). Their text is not emitted."""
        self._tok = tokenizer
        self._skip = skip_special_tokens
        self._byte_fallback = tokenizer.is_byte_fallback
        self._decode_ids, self._decode_id = tokenizer.decode, tokenizer.decode_id   # bound once, used per token
        self._joined = tokenizer.joined_text
        self._prefix_joins = False           # the window is one token with a joined text (Tokenizer.joined_text)
        self._ids: list[int] = list(context_ids)[-6:]
        self._prefix = 0                     # window start in _ids
        self._read = len(self._ids)          # last clean boundary in _ids
        self._prefix_text = self._decode(self._ids) if self._ids else ""
        self._stops = StopMatcher(stop)

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    @property
    def stop_string(self) -> str | None:
        return self._stops.stop_string

    def add(self, ids: int | Iterable[int]) -> str:
        # Called once per stream per decode step: locals, no properties, no feed without stop strings.
        stops = self._stops
        if stops.stopped:
            return ""
        if isinstance(ids, int):
            # The usual decode step of a ByteLevel tokenizer: the window's one token and this one both have a
            # joined text, so decoding the two would give the window's text plus this one's: no decode.
            piece = self._joined(ids) if self._prefix_joins and len(self._ids) == self._read else ""
            self._ids.append(ids)
            if piece:
                self._advance(piece)
                return stops.feed(piece) if stops.stops else piece
        else:
            self._ids.extend(ids)
        if self._byte_fallback and self._ends_in_byte_run():
            return ""
        text = self._decode(self._ids[self._prefix :])
        held = self._prefix_text
        if text.endswith(_REPLACEMENT) or len(text) <= len(held):
            return ""
        self._advance()
        new = text[len(held) :]
        return stops.feed(new) if stops.stops else new

    def flush(self) -> str:
        """Release everything held back (an unfinished character decodes as U+FFFD)."""
        if self.stopped:
            return ""
        text = self._decode(self._ids[self._prefix :])
        new = text[len(self._prefix_text) :]
        self._advance()
        return self._stops.feed(new) + self._stops.flush()

    def _advance(self, joined: str = "") -> None:
        """`joined`: the new window's one token's joined text, when the caller has it."""
        # The window restarts at the previous clean boundary, so the next decode keeps one token of context.
        ids = self._ids
        prefix = self._prefix = self._read
        read = self._read = len(ids)
        if joined:
            self._prefix_text, self._prefix_joins = joined, True
        elif read - prefix == 1:                     # the usual decode step: one token's text, memoised
            self._prefix_text = self._decode_id(ids[prefix], self._skip)
            self._prefix_joins = bool(self._joined(ids[prefix]))
        else:
            self._prefix_text = self._decode(ids[prefix:read])
            self._prefix_joins = False
        if prefix > 64:  # drop ids no window will look at again
            del ids[:prefix]
            self._read = read - prefix
            self._prefix = 0

    def _ends_in_byte_run(self) -> bool:
        """Is the last token that decodes to anything a <0xHH> byte token (skipped specials are invisible)?"""
        for i in reversed(self._ids[self._read :]):
            if not (self._skip and i in self._tok.special_ids):
                return self._tok.is_byte_token(i)
        return False

    def _decode(self, ids: list[int]) -> str:
        return self._decode_ids(ids, skip_special_tokens=self._skip)


class StopMatcher:
    """Finds stop strings in streamed text; holds back a possible partial match."""

    def __init__(self, stop: Iterable[str] = ()):
        self.stops = tuple(s for s in stop if s)
        self._held = ""
        self.stopped = False
        self.stop_string: str | None = None

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        # The stop string that completes first ends generation (a longer one starting earlier would need
        # text after it, which is never generated); two completing together: the one starting earlier.
        hits = [(i + len(s), i, s) for s in self.stops if (i := buf.find(s)) >= 0]
        if hits:
            _, index, stop = min(hits)
            self.stopped, self.stop_string, self._held = True, stop, ""
            return buf[:index]
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best
