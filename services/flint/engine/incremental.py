"""Incremental tokenization: a new text version's token ids from the previous version's.

An edit replaces `text[start:end]` by `replacement`. Instead of re-encoding the
whole text, `IncrementalTokenizer.edit` re-encodes a window of whole tokens
around the edit and splices it between the old tokens before and after it.

Why a window is enough, and how it is checked: BPE tokens never cross a
pre-tokenizer piece boundary, and a merge only involves neighbouring symbols,
so a token far enough from the edit is the same token in both versions. How far
is "far enough" depends on the tokenizer (a regex split with look-ahead, a
SentencePiece run with no pre-tokenizer at all), so the window is verified
instead of assumed: its re-encoding must reproduce, id for id and boundary for
boundary, the old tokens of the unchanged text at both of its ends (the
outermost SYNC_TOKENS of each margin). A window whose edge was cut in the wrong place
shows up there as a different first/last token or a shifted boundary. When the
check fails the margin doubles (the effect of the edit reaches further, e.g. a
long run of spaces or a run of repeated characters that BPE pairs up from the
left); past `max_margin_tokens` it re-encodes the whole text, counted in
`stats.full`. A window that reaches the start (or end) of the text needs no
check on that side. Tokens split inside one character (byte-level tokens of a
multi-byte character share its offsets) never serve as a window edge.

`split(doc, cursor)` gives the prompt's two halves, `encode(text[:cursor])`
and `encode(text[cursor:])` (both as continuations), the same way: each is an
edit that deletes the other half, so per keystroke only the tokens around the
cursor are re-encoded.

Equality with whole-text encoding is property-tested (hypothesis, random edit
sequences) on the demo's byte-level BPE and on a SentencePiece-style BPE with
byte fallback: tests/engine_model/test_incremental_tokenize.py.

Public API (stable):
    IncrementalTokenizer(tokenizer, *, continuation=True, margin_tokens=3, max_margin_tokens=256)
    .full(text) -> TokenizedText;  .edit(doc, start, end, replacement) -> TokenizedText
    .split(doc, cursor) -> (prefix_ids, suffix_ids);  .split_ids (the same as int64 arrays);  .stats: IncrementalStats
    TokenizedText(text, ids, starts, ends)   (numpy int64 arrays; char offsets into text)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from flint.engine.tokenizer import Tokenizer

SYNC_TOKENS = 2   # unchanged tokens each window end must reproduce


@dataclass(frozen=True)
class TokenizedText:
    text: str
    ids: np.ndarray      # [n] token ids
    starts: np.ndarray   # [n] char offset where each token's text starts
    ends: np.ndarray     # [n] char offset where it ends

    def __len__(self) -> int:
        return len(self.ids)

    def token_ids(self) -> list[int]:
        return self.ids.tolist()


@dataclass
class IncrementalStats:
    """Counters (read by metrics): edits served by a window, by a grown window, by a full re-encode."""
    window: int = 0
    grown: int = 0
    full: int = 0
    reencoded_chars: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)


class IncrementalTokenizer:
    def __init__(self, tokenizer: Tokenizer, *, continuation: bool = True, margin_tokens: int = 3,
                 max_margin_tokens: int = 256):
        if margin_tokens < 2 or max_margin_tokens < margin_tokens:
            raise ValueError("margin_tokens must be >= 2 and <= max_margin_tokens")
        self._tok = tokenizer
        self._continuation = continuation
        self._margin = margin_tokens
        self._max_margin = max_margin_tokens
        self.stats = IncrementalStats()

    def full(self, text: str) -> TokenizedText:
        return self._encode(text, continuation=self._continuation)

    def edit(self, doc: TokenizedText, start: int, end: int, replacement: str) -> TokenizedText:
        """`doc` with text[start:end] replaced; equal to `full(new text)`."""
        if not 0 <= start <= end <= len(doc.text):
            raise ValueError(f"edit range [{start}, {end}) is outside a text of {len(doc.text)} characters")
        new_text = doc.text[:start] + replacement + doc.text[end:]
        delta = len(replacement) - (end - start)
        margin = self._margin
        while margin <= self._max_margin:
            spliced = self._try_window(doc, new_text, start, end, delta, margin)
            if spliced is not None:
                self.stats.window += 1
                self.stats.grown += margin > self._margin
                return spliced
            margin *= 2
        self.stats.full += 1
        self.stats.by_reason["unstable_boundary"] = self.stats.by_reason.get("unstable_boundary", 0) + 1
        return self.full(new_text)

    def split(self, doc: TokenizedText, cursor: int) -> tuple[list[int], list[int]]:
        """(encode(text[:cursor]), encode(text[cursor:])) from doc's tokens, re-encoding around the cursor."""
        prefix, suffix = self.split_ids(doc, cursor)
        return prefix.tolist(), suffix.tolist()

    def split_ids(self, doc: TokenizedText, cursor: int) -> tuple[np.ndarray, np.ndarray]:
        """`split` as int64 arrays: what a keystroke's prompt is built from, with no Python int per token
        (at 128K tokens the two lists alone cost ~3 ms of CPU per keystroke)."""
        return self.edit(doc, cursor, len(doc.text), "").ids, self.edit(doc, 0, cursor, "").ids

    # ---- internals ----

    def _encode(self, text: str, *, continuation: bool) -> TokenizedText:
        ids, offsets = self._tok.encode_with_offsets(text, continuation=continuation)
        off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        return TokenizedText(text, np.asarray(ids, dtype=np.int64), off[:, 0].copy(), off[:, 1].copy())

    def _try_window(self, doc: TokenizedText, new_text: str, start: int, end: int, delta: int,
                    margin: int) -> TokenizedText | None:
        n = len(doc)
        # Left edge: the last clean boundary at or before `start`, then `margin` clean boundaries further back.
        k_left = _clean_boundary_back(doc, int(np.searchsorted(doc.ends, start, side="right")))
        k_a = k_left
        for _ in range(margin):
            if k_a == 0:
                break
            k_a = _clean_boundary_back(doc, k_a - 1)
        # Right edge: the first clean boundary at or after `end`, then `margin` further on.
        k_right = _clean_boundary_fwd(doc, int(np.searchsorted(doc.starts, end, side="left")))
        k_b = k_right
        for _ in range(margin):
            if k_b == n:
                break
            k_b = _clean_boundary_fwd(doc, k_b + 1)
        a = _position(doc, k_a)
        b = _position(doc, k_b)
        window = self._encode(new_text[a:b + delta], continuation=self._continuation or a > 0)
        self.stats.reencoded_chars += b + delta - a
        # The unchanged text at both window ends must come out as the same tokens (ids and boundaries); the
        # tokens nearer the edit may change (the edit's effect can reach into the margin).
        left_check = min(SYNC_TOKENS, (k_left - k_a) - 1)
        right_check = min(SYNC_TOKENS, (k_b - k_right) - 1)
        if k_a > 0 and not _same_tokens(window, 0, doc, k_a, left_check, a, 0):
            return None
        if k_b < n and not _same_tokens(window, len(window) - right_check, doc, k_b - right_check, right_check,
                                         a, delta):
            return None
        if (k_a > 0 and left_check <= 0) or (k_b < n and right_check <= 0):
            return None   # nothing unchanged to check against on that side: grow
        return TokenizedText(
            new_text,
            np.concatenate([doc.ids[:k_a], window.ids, doc.ids[k_b:]]),
            np.concatenate([doc.starts[:k_a], window.starts + a, doc.starts[k_b:] + delta]),
            np.concatenate([doc.ends[:k_a], window.ends + a, doc.ends[k_b:] + delta]),
        )


def _is_clean(doc: TokenizedText, k: int) -> bool:
    """Boundary k (before token k) separates whole characters: token k-1 ends where token k starts."""
    return k == 0 or k == len(doc) or doc.ends[k - 1] <= doc.starts[k]


def _clean_boundary_back(doc: TokenizedText, k: int) -> int:
    while not _is_clean(doc, k):
        k -= 1
    return k


def _clean_boundary_fwd(doc: TokenizedText, k: int) -> int:
    while not _is_clean(doc, k):
        k += 1
    return k


def _position(doc: TokenizedText, k: int) -> int:
    if k == 0:
        return 0
    return len(doc.text) if k == len(doc) else int(doc.starts[k])


def _same_tokens(window: TokenizedText, w0: int, doc: TokenizedText, d0: int, count: int, a: int,
                 shift: int) -> bool:
    """window tokens [w0, w0+count) equal doc tokens [d0, d0+count): ids and offsets, with clean edges."""
    if w0 < 0 or w0 + count > len(window):
        return False
    w = slice(w0, w0 + count)
    d = slice(d0, d0 + count)
    if not (np.array_equal(window.ids[w], doc.ids[d])
            and np.array_equal(window.starts[w] + a, doc.starts[d] + shift)
            and np.array_equal(window.ends[w] + a, doc.ends[d] + shift)):
        return False
    return _is_clean(window, w0) and _is_clean(window, w0 + count)
