"""Deterministic synthetic source code for prompts (no downloads, no corpora).

Prompts are Python-like text built from a seeded random generator: modules of
imports, classes, functions with docstrings, loops and arithmetic. The same
(seed, size) gives the same text on every machine and Python version
(`random.Random` with an integer seed is stable).

Sizes are asked for in tokens and turned into characters with
`chars_per_token` (default 3.6: what BPE code tokenizers of the Qwen/Llama
families give on Python source; measure your own with `flint load run
--chars-per-token` against the server's reported prompt_tokens and override).
"""

from __future__ import annotations

import random

DEFAULT_CHARS_PER_TOKEN = 3.6

_NOUNS = ("buffer", "request", "token", "cache", "session", "config", "result", "record", "stream", "batch",
          "window", "index", "score", "delta", "offset", "payload", "worker", "queue", "entry", "prefix")
_VERBS = ("load", "parse", "merge", "split", "update", "flush", "encode", "decode", "render", "validate",
          "compute", "collect", "resolve", "format", "schedule", "release", "apply", "scan", "build", "trim")
_TYPES = ("int", "str", "float", "bytes", "list[int]", "dict[str, int]", "bool")


class CodeWriter:
    """Writes plausible Python source of a requested size, deterministically from a seed."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def name(self) -> str:
        return f"{self.rng.choice(_VERBS)}_{self.rng.choice(_NOUNS)}"

    def class_name(self) -> str:
        return self.rng.choice(_NOUNS).title() + self.rng.choice(_NOUNS).title()

    def statement(self, depth: int) -> list[str]:
        pad = "    " * depth
        a, b = self.rng.choice(_NOUNS), self.rng.choice(_NOUNS)
        kind = self.rng.randrange(6)
        if kind == 0:
            return [f"{pad}{a} = {b} + {self.rng.randint(1, 99)}"]
        if kind == 1:
            return [f"{pad}for {a} in {b}s:", f"{pad}    total += {a}.{self.rng.choice(_NOUNS)}"]
        if kind == 2:
            return [f"{pad}if {a} > {self.rng.randint(0, 512)}:", f"{pad}    return {self.name()}({b})"]
        if kind == 3:
            return [f"{pad}{a}s.append({self.name()}({b}, limit={self.rng.randint(2, 64)}))"]
        if kind == 4:
            return [f"{pad}# {self.rng.choice(_VERBS)} the {a} before the {b} is {self.rng.choice(_VERBS)}d"]
        return [f"{pad}{a} = self.{b}.get({a!r}, {self.rng.randint(0, 9)})"]

    def function(self, depth: int = 0) -> list[str]:
        pad = "    " * depth
        args = ", ".join(f"{n}: {self.rng.choice(_TYPES)}" for n in self.rng.sample(_NOUNS, self.rng.randint(1, 3)))
        self_arg = "self, " if depth else ""
        lines = [f"{pad}def {self.name()}({self_arg}{args}) -> {self.rng.choice(_TYPES)}:",
                 f'{pad}    """{self.rng.choice(_VERBS).title()} the {self.rng.choice(_NOUNS)} '
                 f'and {self.rng.choice(_VERBS)} its {self.rng.choice(_NOUNS)}."""',
                 f"{pad}    total = 0"]
        for _ in range(self.rng.randint(2, 6)):
            lines.extend(self.statement(depth + 1))
        lines.append(f"{pad}    return total")
        return lines + [""]

    def block(self) -> list[str]:
        if self.rng.random() < 0.3:
            lines = [f"class {self.class_name()}:", f'    """Keeps the {self.rng.choice(_NOUNS)}s of one '
                     f'{self.rng.choice(_NOUNS)}."""', ""]
            for _ in range(self.rng.randint(1, 3)):
                lines.extend(self.function(depth=1))
            return lines + [""]
        return self.function() + [""]

    def module(self, chars: int) -> str:
        """Source of at least `chars` characters, cut at a line end near it."""
        lines = [f"import {self.rng.choice(('os', 're', 'json', 'math', 'asyncio'))}", ""]
        size = sum(len(line) + 1 for line in lines)
        while size < chars:
            for line in self.block():
                lines.append(line)
                size += len(line) + 1
        text = "\n".join(lines) + "\n"
        return text[:max(chars, 1)]

    def typed_line(self) -> str:
        """One more line a developer would type next (used by keystroke sessions)."""
        return self.statement(1)[0].lstrip() + "\n"


def code(seed: int, tokens: int, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN) -> str:
    """About `tokens` tokens of synthetic Python source."""
    return CodeWriter(seed).module(int(tokens * chars_per_token))


def repository(seed: int, tokens: int, chars_per_token: float = DEFAULT_CHARS_PER_TOKEN,
               file_tokens: int = 4096) -> list[tuple[str, str]]:
    """About `tokens` tokens of repository context split into files of ~`file_tokens`."""
    rng = random.Random(seed)
    files, left, i = [], tokens, 0
    while left > 0:
        size = min(left, file_tokens)
        files.append((f"pkg/{rng.choice(_NOUNS)}_{i}.py", code(seed * 1000 + i, size, chars_per_token)))
        left -= size
        i += 1
    return files
