"""`FrontendConfig.observability` / `ReplicaConfig.observability`."""

from __future__ import annotations

from dataclasses import dataclass

from flint.config import from_mapping
from flint.errors import InvalidArgument


@dataclass(frozen=True)
class ObservabilityConfig:
    metrics_port: int = -1          # Prometheus /metrics HTTP port; -1 = off, 0 = any free port
    metrics_host: str = "127.0.0.1"
    json_logs: bool = False         # one JSON object per log line, with request_id when known
    tracing: bool = True            # OpenTelemetry spans (exported only if an SDK tracer provider is set up)

    def __post_init__(self) -> None:
        if not isinstance(self.metrics_port, int) or not -1 <= self.metrics_port <= 65535:
            raise InvalidArgument(f"observability.metrics_port must be -1 (off) or in [0, 65535], "
                                  f"got {self.metrics_port!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "ObservabilityConfig":
        return from_mapping(cls, data, where="observability config")
