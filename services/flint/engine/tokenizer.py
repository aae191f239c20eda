"""`Tokenizer`: the checkpoint's `tokenizer.json` (via `tokenizers`) plus what generation needs.

Reads tokenizer.json, tokenizer_config.json (bos/eos tokens, add_bos_token),
generation_config.json and config.json (eos ids). User text is encoded with
special-token parsing OFF, so a prefix that happens to contain
"<|fim_middle|>" stays text instead of steering the template; templates add
special tokens by id (`special_id`).

Public API (stable):
    Tokenizer.from_dir(path) / Tokenizer(tokenizers.Tokenizer, eos_token_ids=..., bos_token_id=..., add_bos=...)
    .encode(text, continuation=False) -> list[int]   (no BOS, specials not parsed; continuation=True:
                                          the text continues earlier text, so SentencePiece-style
                                          tokenizers do not add their start-of-text "▁")
    .encode_with_offsets(text, continuation=False) -> (ids, [(start, end) char offsets])
    .decode(ids, skip_special_tokens=True) -> str
    .decode_id(id, skip_special_tokens=True) -> str   (decode([id]), memoised)
    .joined_text(id) -> str   (what id appends to text without a decode, "" when that needs one; memoised)
    .special_id(token) -> int | None      (id of an added/special token, by its text)
    .eos_token_ids: frozenset[int]; .bos_token_id; .add_bos; .vocab_size
    .special_ids: frozenset[int]; .is_byte_fallback (token ids like <0xE2> exist)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from flint.errors import InvalidArgument, NotFound


class Tokenizer:
    def __init__(
        self,
        tok,  # tokenizers.Tokenizer
        *,
        eos_token_ids: Iterable[int] = (),
        bos_token_id: int | None = None,
        add_bos: bool = False,
    ):
        self._tok = tok
        spec = json.loads(tok.to_str())
        self._encoder = _text_encoder(type(tok), spec)
        plain = _without_start_space(spec)
        self._continuation = self._encoder if plain == spec else _text_encoder(type(tok), plain)
        added = tok.get_added_tokens_decoder()  # id -> AddedToken
        self._added: dict[str, int] = {t.content: i for i, t in added.items()}
        self.special_ids = frozenset(i for i, t in added.items() if t.special)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.bos_token_id = bos_token_id
        self.add_bos = add_bos and bos_token_id is not None
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self._id_texts: tuple[dict[int, str], dict[int, str]] = ({}, {})   # decode_id, by skip_special_tokens
        model = spec.get("model", {})
        self.is_byte_fallback = bool(model.get("byte_fallback"))
        # A lone ByteLevel decoder (GPT-2 style: Qwen, DeepSeek, StarCoder) turns each model token into its bytes
        # and decodes them all together: see joined_text.
        self._joins = (spec.get("decoder") or {}).get("type") == "ByteLevel" and not self.is_byte_fallback
        self._added_ids = frozenset(added)
        self._joined: dict[int, str] = {}
        self._byte_ids = frozenset(
            i for t, i in tok.get_vocab(with_added_tokens=False).items()
            if self.is_byte_fallback and len(t) == 6 and t.startswith("<0x") and t.endswith(">")
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        file = path / "tokenizer.json"
        if not file.is_file():
            raise NotFound(f"{file} not found: flint needs the fast-tokenizer file tokenizer.json")
        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception on parse errors
            raise InvalidArgument(f"{file} is not a valid tokenizer.json: {exc}") from exc
        tok_config = _read_json(path / "tokenizer_config.json")
        gen_config = _read_json(path / "generation_config.json")
        model_config = _read_json(path / "config.json")

        def token_id(value: Any) -> int | None:
            if isinstance(value, dict):  # {"content": "<s>", ...}
                value = value.get("content")
            return tok.token_to_id(value) if isinstance(value, str) else None

        eos: set[int] = set()
        for source in (gen_config.get("eos_token_id"), model_config.get("eos_token_id")):
            eos.update(v for v in (source if isinstance(source, list) else [source]) if isinstance(v, int))
        if (tid := token_id(tok_config.get("eos_token"))) is not None:
            eos.add(tid)
        bos = token_id(tok_config.get("bos_token"))
        if bos is None and isinstance(model_config.get("bos_token_id"), int):
            bos = model_config["bos_token_id"]
        add_bos = bool(tok_config.get("add_bos_token", False))
        return cls(tok, eos_token_ids=eos, bos_token_id=bos, add_bos=add_bos)

    def encode(self, text: str, *, continuation: bool = False) -> list[int]:
        encoder = self._continuation if continuation else self._encoder
        return encoder.encode(text, add_special_tokens=False).ids

    def encode_with_offsets(self, text: str, *, continuation: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """`encode` plus each token's (start, end) character offsets into `text`."""
        encoder = self._continuation if continuation else self._encoder
        enc = encoder.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_id(self, token_id: int, skip_special_tokens: bool = True) -> str:
        """decode([token_id]), kept per id (at most the vocabulary): the incremental detokenizer asks for one
        token's text at every decode step of every stream."""
        texts = self._id_texts[bool(skip_special_tokens)]
        text = texts.get(token_id)
        if text is None:
            text = texts[token_id] = self._tok.decode([token_id], skip_special_tokens=skip_special_tokens)
        return text

    def joined_text(self, token_id: int) -> str:
        """The text `token_id` adds after any token with a joined text, found without a decode; "" when it
        depends on its neighbours. Non-empty only for a lone ByteLevel decoder, a model (not added) token and
        a text of whole characters: the decoder decodes all tokens' bytes together, and bytes that are whole
        UTF-8 characters on both sides of a boundary decode to the two texts joined."""
        text = self._joined.get(token_id)
        if text is None:
            text = ""
            if self._joins and token_id not in self._added_ids:
                text = self.decode_id(token_id)
                if "\ufffd" in text:
                    text = ""
            self._joined[token_id] = text
        return text

    def special_id(self, token: str) -> int | None:
        """Id of an added token by its exact text (e.g. "<|fim_prefix|>"), or None."""
        return self._added.get(token)

    def is_byte_token(self, token_id: int) -> bool:
        """True for byte-fallback tokens (<0xHH>), whose text depends on the tokens after them."""
        return token_id in self._byte_ids

    @property
    def hf(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._tok


def _text_encoder(cls, spec: dict):
    """A copy of the tokenizer that encodes "<|x|>" in user text as plain text (tokenizers >= 0.19)."""
    encoder = cls.from_str(json.dumps(spec))
    if hasattr(encoder, "encode_special_tokens"):
        encoder.encode_special_tokens = True
    return encoder


def _without_start_space(spec: dict) -> dict:
    """The spec minus SentencePiece's start-of-text space (a Prepend("▁") normalizer or Metaspace prepend)."""
    spec = json.loads(json.dumps(spec))
    norm = spec.get("normalizer") or {}
    if norm.get("type") == "Prepend":
        spec["normalizer"] = None
    elif norm.get("type") == "Sequence":
        norm["normalizers"] = [n for n in norm.get("normalizers", []) if n.get("type") != "Prepend"]
    pre = spec.get("pre_tokenizer") or {}
    for p in [pre, *pre.get("pretokenizers", [])]:
        if p.get("type") == "Metaspace":
            p["prepend_scheme"] = "never"
            p.pop("add_prefix_space", None)
    return spec


def _read_json(file: Path) -> dict:
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{file} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}
