"""Target adapters: how the load generator talks to a server under test.

- `flint`: flint.v1 Session streams over gRPC (interrupts and redirects are
  protocol messages, acknowledged by the server);
- `openai`: OpenAI-compatible streaming `/v1/completions` over HTTP (SSE);
  an interrupt is closing the stream.
"""

from __future__ import annotations

from flint.load.targets.base import RequestState, Session, Target


def make_target(config, clock) -> Target:
    """The adapter named by `config.protocol` (a TargetConfig)."""
    if config.protocol == "flint":
        from flint.load.targets.flint_grpc import FlintTarget

        return FlintTarget(config, clock)
    from flint.load.targets.openai_http import OpenAITarget

    return OpenAITarget(config, clock)


__all__ = ["RequestState", "Session", "Target", "make_target"]
