"""Configuration of a load run: target, bounds, SLO, arrival, scenario.

One frozen dataclass per part, validated on construction; a scenario file
(TOML or JSON, see loadtests/scenarios/) mirrors them as tables. Every run is
bounded in time and in requests, and only targets this machine (loopback)
unless `allow_remote` says the user owns the target.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from flint.addresses import is_loopback
from flint.config import from_mapping, load_config_file
from flint.errors import InvalidArgument
from flint.load.arrival import ArrivalConfig
from flint.load.slo import SloConfig

MAX_DURATION_S = 3600.0
MAX_REQUESTS = 1_000_000
PROTOCOLS = ("flint", "openai")


@dataclass(frozen=True)
class TargetConfig:
    protocol: str = "flint"
    address: str = "127.0.0.1:50051"        # host:port for flint; base URL for openai
    model: str = ""
    allow_remote: bool = False               # the user owns a non-loopback target
    request_timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    fim_template: str = "auto"               # openai: a family's FIM prompt (auto: from the model name) or `suffix`
    metrics_url: str = ""                    # the server's Prometheus endpoint, scraped before and after
    resume: bool = True                      # flint: resume requests whose stream was lost (UNAVAILABLE)
    api_key_env: str = ""                    # flint: the environment variable holding the API key ("" = none)
    tls_ca_file: str = ""                    # flint: TLS to the target, trusting this CA's PEM ("" = plaintext)
    tls_server_name: str = ""                # flint: the name in the server's certificate, when not the address

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise InvalidArgument(f"target protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        from flint.load.targets.openai_http import FIM_TEMPLATES

        if self.fim_template not in FIM_TEMPLATES:
            raise InvalidArgument(f"fim_template must be one of {', '.join(FIM_TEMPLATES)}, got {self.fim_template!r}")
        if not self.allow_remote and not is_loopback(self.address):
            raise InvalidArgument(
                f"target {self.address!r} is not on this machine; flint load only targets 127.0.0.1/::1/localhost "
                "unless you pass --i-own-the-target (allow_remote = true) for a deployment you own")
        if self.metrics_url and not self.allow_remote and not is_loopback(self.metrics_url):
            raise InvalidArgument(f"metrics_url {self.metrics_url!r} is not on this machine (see --i-own-the-target)")
        if self.request_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise InvalidArgument("request_timeout_s and connect_timeout_s must be > 0")
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise InvalidArgument(f"api_key_env: the environment variable {self.api_key_env!r} is not set")
        if self.tls_ca_file and not os.path.isfile(self.tls_ca_file):
            raise InvalidArgument(f"tls_ca_file: {self.tls_ca_file!r} is not a readable file")


@dataclass(frozen=True)
class BoundsConfig:
    duration_s: float = 30.0                 # no job starts after this
    max_requests: int = 20_000               # no request is sent beyond this many
    drain_s: float = 15.0                    # then in-flight requests get this long before they are abandoned

    def __post_init__(self):
        if not 0 < self.duration_s <= MAX_DURATION_S:
            raise InvalidArgument(f"duration_s must be in (0, {MAX_DURATION_S:.0f}], got {self.duration_s}")
        if not 0 < self.max_requests <= MAX_REQUESTS:
            raise InvalidArgument(f"max_requests must be in [1, {MAX_REQUESTS}], got {self.max_requests}")
        if not 0 <= self.drain_s <= 600:
            raise InvalidArgument(f"drain_s must be in [0, 600], got {self.drain_s}")


@dataclass(frozen=True)
class RunConfig:
    scenario: str = "keystroke"
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    arrival: ArrivalConfig = field(default_factory=ArrivalConfig)
    bounds: BoundsConfig = field(default_factory=BoundsConfig)
    slo: SloConfig = field(default_factory=SloConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    generators: int = 1
    stall_ms: float = 100.0                  # a gap between deltas above this is a stall
    lag_budget_ms: float = 20.0              # sends later than this count as late (see summary.summarize)
    label: str = ""

    def __post_init__(self):
        parts = {"arrival": ArrivalConfig, "bounds": BoundsConfig, "slo": SloConfig, "target": TargetConfig}
        for name, cls in parts.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, from_mapping(cls, value, where=name))
        if not 1 <= self.generators <= 64:
            raise InvalidArgument(f"generators must be in [1, 64], got {self.generators}")
        if self.stall_ms <= 0 or self.lag_budget_ms <= 0:
            raise InvalidArgument("stall_ms and lag_budget_ms must be > 0")

    def to_json(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self)


def load_run_config(path: str | None, overrides: dict[str, Any]) -> RunConfig:
    """RunConfig from a scenario file (optional) with `overrides` merged in (tables merge key by key)."""
    data = load_config_file(path) if path else {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return from_mapping(RunConfig, data, where=path or "run options")
