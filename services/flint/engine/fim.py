"""Prompt templates: fill-in-the-middle per model family, and an edit template.

A template turns a request into token ids plus the tokens/strings that end
generation. Special tokens are inserted by id and user text is encoded with
special-token parsing off (`Tokenizer.encode`), so text in the editor can
never forge a template token.

FIM families (auto-chosen from the tokenizer's special tokens, in this order;
override with `template=`), shown in prefix-suffix-middle (PSM) order:
    qwen       <|fim_prefix|>P<|fim_suffix|>S<|fim_middle|>  (Qwen2.5-Coder, the demo model); with context
               files: <|repo_name|>R\\n<|file_sep|>path\\ncontent\\n ... <|file_sep|>path\\n<FIM>
    starcoder  <fim_prefix>P<fim_suffix>S<fim_middle>; context as <repo_name>/<file_sep> (StarCoder2)
               or <filename> (StarCoder)
    deepseek   <｜fim▁begin｜>P<｜fim▁hole｜>S<｜fim▁end｜>; context files as path comments before
    codellama  ▁<PRE>P▁<SUF>S▁<MID> (PSM); context files as path comments before
    plain      no FIM tokens: prefix only, the suffix is dropped and the Prompt says so in `notes`
Extra context files always come before the current file, sorted by path (a stable
order, never by recency: a keystroke must not reorder what is already in the KV cache).

Layout (`layout=`, EngineConfig.fim_layout): what comes first decides what a keystroke re-prefills, since
the prefix cache keeps only the tokens before the first change and a keystroke changes the end of the prefix.
    spm   suffix before prefix: <PRE><SUF>S<MID>P. Only the edited end of the prefix is re-prefilled.
          Default ("auto") for the families trained with it: starcoder, codellama.
    psm   prefix-suffix-middle with the suffix cut to its first `suffix_window_tokens` tokens (the code right
          after the cursor), so a keystroke re-prefills the edited prefix end, that window and <MID>.
          Default for families trained only with PSM: qwen, deepseek. 0 = the whole suffix.
Prefix and suffix may come as token ids (`prefix_ids=`, `suffix_ids=` or the request's fields of the
same name: a document's incremental tokenization, flint.replica.documents) instead of text; they must
equal encoding the text (as a continuation: documents need a template with FIM tokens).

Edit (`kind=EDIT`): the code region and the instruction, then the start of a
fenced code block; the model writes the replacement, which mostly copies the
region (so prompt-lookup speculation pays), and the closing fence stops it.
Tokenizers with ChatML tokens (<|im_start|>) get it as a chat turn.

Public API (stable):
    build_prompt(tokenizer, request: GenerateRequest, *, template=None, layout="auto",
                 suffix_window_tokens=DEFAULT_SUFFIX_WINDOW_TOKENS, prefix_ids=None, suffix_ids=None) -> Prompt
    LAYOUTS; layout_of(template, layout) -> "spm" | "psm"
    choose_template(tokenizer, name=None) -> FimTemplate;  TEMPLATE_NAMES
    Prompt(ids, stop_token_ids, stop_strings, template, notes, layout)   (.token_ids: the ids as a tuple)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from flint.engine.config import FIM_LAYOUTS
from flint.engine.tokenizer import Tokenizer
from flint.engine.types import ContextFile, GenerateRequest, RequestKind
from flint.errors import InvalidArgument

Segment = str | int | tuple | np.ndarray   # text to encode, a token id, or token ids already encoded
LAYOUTS = FIM_LAYOUTS
DEFAULT_SUFFIX_WINDOW_TOKENS = 64


@dataclass(frozen=True, eq=False)
class Prompt:
    ids: np.ndarray                      # [n] int64: what the engine takes (no Python int per token)
    stop_token_ids: frozenset[int]
    stop_strings: tuple[str, ...] = ()
    template: str = ""
    notes: tuple[str, ...] = ()
    layout: str = ""     # "spm" | "psm" for FIM prompts

    @property
    def token_ids(self) -> tuple[int, ...]:
        return tuple(self.ids.tolist())


@dataclass(frozen=True)
class FimTemplate:
    name: str
    prefix: str          # special token texts; "" for the plain fallback
    suffix: str
    middle: str
    stops: tuple[str, ...]
    repo_token: str = ""  # starts repo-level context
    file_token: str = ""  # precedes each file path
    spm: bool = False     # trained with suffix-prefix-middle too, so "auto" lays it out suffix first

    def available(self, tok: Tokenizer) -> bool:
        return all(tok.special_id(t) is not None for t in (self.prefix, self.suffix, self.middle) if t)

    def segments(self, tok: Tokenizer, prefix: Segment, suffix: Segment, path: str,
                 context: Sequence[ContextFile], *, spm: bool = False) -> list[Segment]:
        out: list[Segment] = []
        context = sorted(context, key=lambda c: c.path)
        file_id = tok.special_id(self.file_token) if self.file_token else None
        if context and file_id is not None:
            repo_id = tok.special_id(self.repo_token) if self.repo_token else None
            if repo_id is not None:
                out += [repo_id, _repo_name([path, *(c.path for c in context)]) + "\n"]
            for c in context:
                out += [file_id, f"{c.path}\n{c.content}\n"]
            out += [file_id, f"{path or 'current_file'}\n"]
        elif context:
            out.append("".join(_path_comment(c.path) + c.content.rstrip("\n") + "\n\n" for c in context))
            if path:
                out.append(_path_comment(path))
        if not self.prefix:
            return out + [prefix]
        pre, suf, mid = (tok.special_id(t) for t in (self.prefix, self.suffix, self.middle))
        if spm:
            return out + [pre, suf, suffix, mid, prefix]  # type: ignore[list-item]
        return out + [pre, prefix, suf, suffix, mid]  # type: ignore[list-item]


TEMPLATES = (
    FimTemplate("qwen", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>",
                ("<|endoftext|>", "<|fim_pad|>", "<|file_sep|>", "<|repo_name|>", "<|fim_prefix|>", "<|im_end|>"),
                repo_token="<|repo_name|>", file_token="<|file_sep|>"),
    FimTemplate("starcoder", "<fim_prefix>", "<fim_suffix>", "<fim_middle>",
                ("<|endoftext|>", "<file_sep>", "<fim_prefix>", "<filename>"),
                repo_token="<repo_name>", file_token="<file_sep>", spm=True),
    FimTemplate("deepseek", "<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>",
                ("<｜end▁of▁sentence｜>", "<|EOT|>")),
    FimTemplate("codellama", "▁<PRE>", "▁<SUF>", "▁<MID>", ("▁<EOT>", "</s>"), spm=True),
    FimTemplate("plain", "", "", "", ()),
)
TEMPLATE_NAMES = tuple(t.name for t in TEMPLATES)


def choose_template(tok: Tokenizer, name: str | None = None) -> FimTemplate:
    """The named template, or the first family whose FIM tokens the tokenizer has."""
    if name:
        for t in TEMPLATES:
            if t.name == name:
                if not t.available(tok):
                    raise InvalidArgument(
                        f"FIM template {name!r} needs tokens {t.prefix}, {t.suffix}, {t.middle}, which this "
                        f"tokenizer lacks; templates it supports: {', '.join(supported_templates(tok))}"
                    )
                return _starcoder1(t, tok)
        raise InvalidArgument(f"unknown FIM template {name!r}; known: {', '.join(TEMPLATE_NAMES)}")
    return _starcoder1(next(t for t in TEMPLATES if t.available(tok)), tok)


def supported_templates(tok: Tokenizer) -> list[str]:
    return [t.name for t in TEMPLATES if t.available(tok)]


def _starcoder1(t: FimTemplate, tok: Tokenizer) -> FimTemplate:
    """StarCoder (1) has <filename> instead of StarCoder2's <repo_name>/<file_sep>."""
    if t.name == "starcoder" and tok.special_id("<file_sep>") is None and tok.special_id("<filename>") is not None:
        return FimTemplate(t.name, t.prefix, t.suffix, t.middle, t.stops, file_token="<filename>", spm=t.spm)
    return t


def layout_of(fim: FimTemplate, layout: str = "auto") -> str:
    if layout not in LAYOUTS:
        raise InvalidArgument(f"unknown FIM layout {layout!r}; known: {', '.join(LAYOUTS)}")
    return ("spm" if fim.spm else "psm") if layout == "auto" else layout


def build_prompt(tok: Tokenizer, request: GenerateRequest, *, template: str | None = None, layout: str = "auto",
                 suffix_window_tokens: int = DEFAULT_SUFFIX_WINDOW_TOKENS, prefix_ids: Sequence[int] | None = None,
                 suffix_ids: Sequence[int] | None = None) -> Prompt:
    fim = choose_template(tok, template)
    prefix_ids = request.prefix_ids if prefix_ids is None else prefix_ids
    suffix_ids = request.suffix_ids if suffix_ids is None else suffix_ids
    if request.kind is RequestKind.EDIT:
        chat = tok.special_id("<|im_start|>") is not None and tok.special_id("<|im_end|>") is not None
        segments = _edit_segments(tok, request, chat)
        name, stop_strings, notes, arrangement = ("edit-chat" if chat else "edit"), ("```",), (), ""
    else:
        spm = bool(fim.prefix) and layout_of(fim, layout) == "spm"
        prefix: Segment = _ids(prefix_ids) if prefix_ids is not None else request.prefix
        suffix: Segment = request.suffix
        if fim.prefix and not spm and suffix_window_tokens > 0:   # PSM: only the suffix nearest the cursor
            ids = suffix_ids if suffix_ids is not None else tok.encode(request.suffix, continuation=True)
            suffix = tuple(ids[:suffix_window_tokens])
        elif suffix_ids is not None:
            suffix = _ids(suffix_ids)
        segments = fim.segments(tok, prefix, suffix, request.path, request.context, spm=spm)
        name, stop_strings, notes, arrangement = fim.name, (), (), ("spm" if spm else "psm") if fim.prefix else ""
        if not fim.prefix and request.suffix:
            notes = ("this tokenizer has no FIM tokens: the suffix was ignored (prefix-only completion)",)
    # Pieces joined once as int64: a document keystroke's prefix and suffix arrive as arrays of up to 128K ids,
    # and a list of Python ints (then np.asarray in the engine) cost ~2.5 ms per keystroke at that size.
    parts: list = [[tok.bos_token_id]] if tok.add_bos and tok.bos_token_id is not None else []
    for i, seg in enumerate(segments):
        if isinstance(seg, int):
            parts.append([seg])
        elif isinstance(seg, (tuple, np.ndarray)):
            parts.append(seg)
        elif seg:  # text after a template token continues it (no SentencePiece start-of-text space)
            parts.append(tok.encode(seg, continuation=i > 0))
    ids = np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts else np.empty(0, np.int64)
    stops = set(tok.eos_token_ids)
    stops.update(i for s in fim.stops if (i := tok.special_id(s)) is not None)
    if name == "edit-chat":
        stops.add(tok.special_id("<|im_end|>"))  # type: ignore[arg-type]
    return Prompt(ids, frozenset(stops), stop_strings, name, notes, arrangement)


def _ids(ids: Sequence[int]) -> Segment:
    """Token ids as a segment: arrays stay arrays (no per-token conversion), anything else a tuple."""
    return ids if isinstance(ids, np.ndarray) else tuple(ids)


def _edit_segments(tok: Tokenizer, r: GenerateRequest, chat: bool) -> list[Segment]:
    lang = _language(r.path)
    parts = ["".join(_path_comment(c.path) + c.content.rstrip("\n") + "\n\n" for c in r.context)]
    if r.path:
        parts.append(f"File: {r.path}\n")
    if r.prefix:
        parts.append(f"Code before the region:\n```{lang}\n{r.prefix}\n```\n")
    parts.append(f"Region to rewrite:\n```{lang}\n{r.code}\n```\n")
    if r.suffix:
        parts.append(f"Code after the region:\n```{lang}\n{r.suffix}\n```\n")
    parts.append(f"Instruction: {r.instruction}\nReply with the rewritten region only.\n")
    body = "".join(parts)
    answer = f"```{lang}\n"
    if not chat:
        return [body + "Rewritten region:\n" + answer]
    start, end = tok.special_id("<|im_start|>"), tok.special_id("<|im_end|>")
    return [start, "system\nYou rewrite code regions as instructed.", end, "\n",  # type: ignore[list-item]
            start, "user\n" + body, end, "\n", start, "assistant\n" + answer]  # type: ignore[list-item]


_COMMENT = {".py": "#", ".sh": "#", ".rb": "#", ".toml": "#", ".yaml": "#", ".yml": "#", ".r": "#",
            ".sql": "--", ".lua": "--", ".hs": "--"}
_LANG = {".py": "python", ".js": "javascript", ".ts": "typescript", ".go": "go", ".rs": "rust", ".java": "java",
         ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".rb": "ruby", ".sh": "bash", ".sql": "sql"}


def _path_comment(path: str) -> str:
    return f"{_COMMENT.get(os.path.splitext(path)[1].lower(), '//')} {path}\n" if path else ""


def _language(path: str) -> str:
    return _LANG.get(os.path.splitext(path)[1].lower(), "")


def _repo_name(paths: Sequence[str]) -> str:
    """A repository name for repo-level FIM: the top directory shared by the paths, else "repo"."""
    tops = {p.strip("/").split("/")[0] for p in paths if p and "/" in p.strip("/")}
    return tops.pop() if len(tops) == 1 else "repo"
