"""Configs of the serving components: `flint serve`, front-end workers, engine replicas.

One frozen dataclass per component, validated on construction, built from
CLI flags and/or a config file (TOML or JSON) whose keys mirror the flags.
Unknown keys are errors that list the allowed ones. The engine's own
`EngineConfig` lives in `flint.engine.config`; `ServeConfig.engine` carries
its extra keys through unchanged so the engine validates them itself.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, TypeVar

from flint.errors import InvalidArgument

T = TypeVar("T")

DEFAULT_PORT = 50051
DEFAULT_HTTP_PORT = 8000               # the OpenAI-compatible HTTP door, /health and /metrics (vLLM's port)
WILDCARD_HOSTS = ("", "0.0.0.0", "::", "*")
ENGINE_TRANSPORTS = ("link", "grpc")   # the front-end -> replica hop (README: the token path)
_ID = re.compile(r"^[A-Za-z0-9._:-]{0,128}$")


def from_mapping(cls: type[T], data: Mapping[str, Any], *, where: str = "config") -> T:
    """Build config dataclass `cls` from a mapping; dashes in keys read as underscores."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InvalidArgument(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed keys: {', '.join(sorted(names))}"
        )
    check_types(cls, values, where=where)
    try:
        return cls(**values)
    except TypeError as exc:  # a type the check above cannot express
        raise InvalidArgument(f"{where}: {exc}") from exc


def check_types(cls: type, values: Mapping[str, Any], *, where: str = "config") -> None:
    """Raise InvalidArgument naming the first key whose value does not have its field's declared type.

    Without this a string where a number belongs surfaced as "'<' not supported between instances of 'int'
    and 'str'" from a range check, naming no key. Integers pass for floats; bools never pass for numbers.
    Nested dataclasses (a sub-table) are checked by their own from_mapping.
    """
    hints = typing.get_type_hints(cls)
    for name, value in values.items():
        expected = hints.get(name)
        if expected is not None and not _has_type(value, expected):
            raise InvalidArgument(f"{where}: {name} must be {_describe(expected)}, got {value!r} "
                                  f"({type(value).__name__})")


def _has_type(value: Any, expected: Any) -> bool:
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arm) for arm in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if expected is type(None):
        return value is None
    if origin is not None:                      # list[int], dict[str, Any], tuple[int, ...]: the container only
        expected = (list, tuple) if origin in (list, tuple) else origin
    if dataclasses.is_dataclass(expected):
        return isinstance(value, (expected, Mapping))
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected) if isinstance(expected, (type, tuple)) else True


def _describe(expected: Any) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(expected))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(expected))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
             list: "a list", tuple: "a list", dict: "a table"}
    base = origin or expected
    if dataclasses.is_dataclass(base):
        return f"a table of {base.__name__} keys"
    return names.get(base, getattr(base, "__name__", str(base)))


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (`.toml`) or JSON (anything else) config file into a dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}")
    if not isinstance(data, dict):
        raise InvalidArgument(f"config file {path} must hold a table/object of keys at the top level")
    return data


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InvalidArgument(message)


def _check_port(name: str, port: int) -> None:
    _check(isinstance(port, int) and 0 <= port <= 65535, f"{name} must be an integer in [0, 65535], got {port!r}")


def _check_transport(transport: str) -> None:
    _check(transport in ENGINE_TRANSPORTS,
           f"engine_transport must be 'link' or 'grpc', got {transport!r}")


def _check_http_port(port: int) -> None:
    _check(isinstance(port, int) and -1 <= port <= 65535, f"http_port must be -1 (off) or in [0, 65535], got {port!r}")


def _check_positive(name: str, value: float) -> None:
    _check(isinstance(value, (int, float)) and value > 0, f"{name} must be > 0, got {value!r}")


def _check_id(name: str, value: str) -> None:
    _check(bool(_ID.match(value)), f"{name} may only use [A-Za-z0-9._:-] (at most 128), got {value!r}")


def _check_tables(config, names: tuple[str, ...]) -> None:
    """Validate nested config tables with their owners' dataclasses (imported lazily: no cycles)."""
    from flint.admission import AdmissionConfig
    from flint.docstore import DocumentLimits
    from flint.frontend.journal import JournalConfig
    from flint.frontend.liveness import LivenessConfig
    from flint.frontend.outbox import BufferLimits
    from flint.observability.config import ObservabilityConfig
    from flint.security.config import SecurityConfig

    owners = {"journal": JournalConfig, "admission": AdmissionConfig, "security": SecurityConfig,
              "observability": ObservabilityConfig, "documents": DocumentLimits, "buffers": BufferLimits,
              "liveness": LivenessConfig}
    for name in names:
        value = getattr(config, name)
        _check(isinstance(value, dict), f"{name} must be a table of settings, got {value!r}")
        owners[name].from_dict(value)


@dataclass(frozen=True)
class ReplicaConfig:
    """One engine replica: its internal gRPC server and its entry in the Redis replica registry."""

    redis_url: str
    replica_id: str = ""               # "" = generated at start
    host: str = "127.0.0.1"            # bind address of the internal gRPC server: a private interface, or
                                       # "node" = the node IP Ray reports (never a wildcard such as 0.0.0.0)
    advertise_host: str = ""           # address published in Redis; "" = host
    port: int = 0                      # 0 = any free port
    link_port: int = 0                 # the engine link (flint.link) on the same host; 0 = any free port
    key_prefix: str = "flint"
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 5.0       # a replica that misses heartbeats this long drops out of routing
    grace_period_s: float = 5.0        # running streams get this long to finish on shutdown
    deregister_delay_s: float = 1.0    # on shutdown, keep serving this long after leaving the registry
    prepare_workers: int = 1           # threads tokenizing prompts, shared round-robin between tenants
    admission: dict[str, Any] = field(default_factory=dict)      # flint.admission.AdmissionConfig
    observability: dict[str, Any] = field(default_factory=dict)  # flint.observability.config.ObservabilityConfig
    documents: dict[str, Any] = field(default_factory=dict)      # flint.docstore.DocumentLimits
    # The deployment's internal API secret (flint.security.internal); "" = internal_token_file or the environment.
    internal_token: str = field(default="", repr=False)
    internal_token_file: str = ""

    def __post_init__(self) -> None:
        _check_tables(self, ("admission", "observability"))
        _check(bool(self.redis_url), "replica: redis_url is required")
        _check(self.host.strip("[]") not in WILDCARD_HOSTS,
               f"replica host {self.host!r} binds every interface; bind a private interface instead: 127.0.0.1 "
               "(one machine), the node's private IP, or 'node' (the node IP Ray reports)")
        _check_id("replica_id", self.replica_id)
        _check_port("replica port", self.port)
        _check_port("replica link_port", self.link_port)
        _check_positive("heartbeat_interval_s", self.heartbeat_interval_s)
        _check(
            self.heartbeat_ttl_s > self.heartbeat_interval_s,
            f"heartbeat_ttl_s ({self.heartbeat_ttl_s}) must exceed heartbeat_interval_s "
            f"({self.heartbeat_interval_s}) or live replicas expire between heartbeats",
        )
        _check(self.grace_period_s >= 0, f"grace_period_s must be >= 0, got {self.grace_period_s}")
        _check(self.deregister_delay_s >= 0, f"deregister_delay_s must be >= 0, got {self.deregister_delay_s}")
        _check(isinstance(self.prepare_workers, int) and 1 <= self.prepare_workers <= 64,
               f"prepare_workers must be an integer in [1, 64], got {self.prepare_workers!r}")

    def bind_host(self) -> str:
        """The address to bind: `host`, with "node" resolved to the IP Ray reports for this node."""
        if self.host != "node":
            return self.host
        import ray

        return ray.util.get_node_ip_address()


@dataclass(frozen=True)
class FrontendConfig:
    """One front-end worker process (stateless: everything shared lives in Redis)."""

    redis_url: str
    worker_id: str = ""                # "" = generated at start
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT           # 0 = any free port
    http_port: int = -1                # HTTP door (OpenAI API, /health, /metrics); -1 = off, 0 = any free port
    reuse_port: bool = True            # several worker processes share one port (SO_REUSEPORT)
    key_prefix: str = "flint"
    routing: str = "affinity"          # "affinity" (session's replica, else power-of-two choices) | "least_loaded"
    session_ttl_s: float = 3600.0
    request_ttl_s: float = 600.0       # how long a finished request stays known (interrupt -> NOT_FOUND after)
    interrupt_timeout_s: float = 2.0   # wait for the owning worker's acknowledgement
    flag_poll_interval_ms: float = 50.0  # backs up pub/sub: owners also poll interrupt flag keys
    replica_wait_s: float = 5.0        # a request waits this long for a replica to appear in Redis
    grace_period_s: float = 5.0
    max_message_bytes: int = 16 * 1024 * 1024
    engine_transport: str = "link"     # the hop to replicas: "link" (flint.link) | "grpc" (a Generate call each)
    # Nested tables validated by their owners (unknown keys / bad values fail here, at start-up):
    journal: dict[str, Any] = field(default_factory=dict)        # flint.frontend.journal.JournalConfig
    admission: dict[str, Any] = field(default_factory=dict)      # flint.admission.AdmissionConfig
    security: dict[str, Any] = field(default_factory=dict)       # flint.security.config.SecurityConfig
    observability: dict[str, Any] = field(default_factory=dict)  # flint.observability.config.ObservabilityConfig
    documents: dict[str, Any] = field(default_factory=dict)      # flint.docstore.DocumentLimits
    buffers: dict[str, Any] = field(default_factory=dict)        # flint.frontend.outbox.BufferLimits
    liveness: dict[str, Any] = field(default_factory=dict)       # flint.frontend.liveness.LivenessConfig
    # The deployment's internal API secret sent to replicas (flint.security.internal); "" = file or environment.
    internal_token: str = field(default="", repr=False)
    internal_token_file: str = ""

    def __post_init__(self) -> None:
        _check_tables(self, ("journal", "admission", "security", "observability", "documents", "buffers",
                             "liveness"))
        _check(bool(self.redis_url), "front-end: redis_url is required")
        _check_id("worker_id", self.worker_id)
        _check_port("port", self.port)
        _check_http_port(self.http_port)
        _check(self.routing in ("affinity", "least_loaded"),
               f"routing must be 'affinity' or 'least_loaded', got {self.routing!r}")
        for name in ("session_ttl_s", "request_ttl_s", "interrupt_timeout_s", "flag_poll_interval_ms",
                     "replica_wait_s"):
            _check_positive(name, getattr(self, name))
        _check(self.max_message_bytes >= 1024, "max_message_bytes must be >= 1024")
        _check_transport(self.engine_transport)


@dataclass(frozen=True)
class ServeConfig:
    """`flint serve`: what to start. Keys mirror the command-line flags."""

    model: str = ""                    # HF checkpoint directory; "" = the demo checkpoint
    redis_url: str = ""                # "" = start an embedded Valkey
    ray_address: str = ""              # "" = start a local Ray instance
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    http_port: int = DEFAULT_HTTP_PORT  # OpenAI-compatible HTTP door on every worker; -1 = off
    workers: int = 1                   # front-end worker processes
    replicas: int = 1                  # engine replicas
    replica_num_cpus: float = 1.0      # Ray CPU resource held by each replica actor
    replica_max_restarts: int = 3      # Ray restarts a crashed replica this often (-1: always, 0: never)
    ray_num_cpus: int = 0              # CPUs of the local Ray instance; 0 = Ray's default
    routing: str = "affinity"
    engine_transport: str = "link"     # front-end -> replica hop: "link" | "grpc" (see FrontendConfig)
    startup_timeout_s: float = 300.0
    engine: dict[str, Any] = field(default_factory=dict)  # extra EngineConfig keys
    # Front-end tables (see FrontendConfig); admission also applies to the replicas.
    journal: dict[str, Any] = field(default_factory=dict)
    admission: dict[str, Any] = field(default_factory=dict)
    security: dict[str, Any] = field(default_factory=dict)
    observability: dict[str, Any] = field(default_factory=dict)  # metrics_port N: worker i serves N + i
    buffers: dict[str, Any] = field(default_factory=dict)        # output held for slow clients
    liveness: dict[str, Any] = field(default_factory=dict)       # keepalive, idle/age limits, engine watch

    def __post_init__(self) -> None:
        _check_port("port", self.port)
        _check_http_port(self.http_port)
        _check(isinstance(self.workers, int) and 1 <= self.workers <= 64,
               f"workers must be an integer in [1, 64], got {self.workers!r}")
        _check(isinstance(self.replicas, int) and 1 <= self.replicas <= 64,
               f"replicas must be an integer in [1, 64], got {self.replicas!r}")
        _check(self.replica_num_cpus >= 0, f"replica_num_cpus must be >= 0, got {self.replica_num_cpus}")
        _check(isinstance(self.replica_max_restarts, int) and self.replica_max_restarts >= -1,
               f"replica_max_restarts must be an integer >= -1 (-1 = always), got {self.replica_max_restarts!r}")
        _check(isinstance(self.ray_num_cpus, int) and self.ray_num_cpus >= 0,
               f"ray_num_cpus must be an integer >= 0, got {self.ray_num_cpus!r}")
        _check(self.routing in ("affinity", "least_loaded"),
               f"routing must be 'affinity' or 'least_loaded', got {self.routing!r}")
        _check_positive("startup_timeout_s", self.startup_timeout_s)
        _check_transport(self.engine_transport)
        _check(isinstance(self.engine, dict), "engine must be a table of EngineConfig keys")
        _check_tables(self, ("journal", "admission", "security", "observability", "buffers", "liveness"))
        if self.model:  # checked here so a typo fails before Ray starts
            model = Path(self.model).expanduser()
            _check(model.is_dir() and (model / "config.json").is_file(),
                   f"--model {self.model!r} is not an HF checkpoint directory (no config.json there); pass a "
                   "directory holding config.json, *.safetensors and tokenizer.json, or omit it for the demo model")
