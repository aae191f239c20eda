"""Size limits on one request, checked before any Redis or engine work is spent on it."""

from __future__ import annotations

from flint.errors import InvalidArgument
from flint.security.config import SecurityConfig


def _size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_request_limits(request, config: SecurityConfig) -> None:
    """INVALID_ARGUMENT naming the limit when a Complete/Edit request carries too much."""
    if len(request.context) > config.max_context_files:
        raise InvalidArgument(f"{len(request.context)} context files sent; at most {config.max_context_files} are "
                              "allowed: send the most relevant ones")
    total = 0
    for f in request.context:
        size = _size(f.content) + _size(f.path)
        if size > config.max_context_file_bytes:
            raise InvalidArgument(f"context file {f.path[:200]!r} is {size} bytes; at most "
                                  f"{config.max_context_file_bytes} bytes per file: send a smaller excerpt")
        total += size
    for name in ("prefix", "suffix", "code", "instruction", "path"):
        if hasattr(request, name):
            total += _size(getattr(request, name))
    if total > config.max_prompt_bytes:
        raise InvalidArgument(f"the request carries {total} bytes of text (prefix, suffix, code, instruction and "
                              f"context together); at most {config.max_prompt_bytes} are allowed: trim the context")
