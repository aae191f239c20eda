"""`FrontendConfig.security`: who may call, over what transport, and how much they may send."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flint.config import from_mapping
from flint.errors import InvalidArgument


@dataclass(frozen=True)
class SecurityConfig:
    # API keys (authentication is on when either source is set). Keys are stored as SHA-256 hashes only.
    api_keys_file: str = ""              # JSON {"keys": [{"tenant": ..., "sha256": ...}]} (see `flint keys`)
    api_keys_in_redis: bool = False      # hash {prefix}:apikeys  sha256 -> tenant
    key_recheck_s: float = 2.0           # a revoked key stops working (open streams included) within this
    # TLS for the public port; mTLS when client_ca_file is set (clients must present a cert it signed).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    allow_plaintext_keys: bool = False   # API keys without TLS on a non-loopback address (a TLS proxy in front)
    # Per-tenant rate limit shared through Redis: requests per second (0 = off), with bursts up to `rate_burst`.
    rate_limit_per_s: float = 0.0
    rate_burst: int = 0                  # 0 = one second's worth
    # Limits on what one request / connection may carry.
    max_prompt_bytes: int = 2 * 1024 * 1024    # prefix + suffix + code + instruction + context, UTF-8
    max_context_files: int = 64
    max_context_file_bytes: int = 1024 * 1024
    max_streams_per_connection: int = 64       # concurrent gRPC streams (HTTP/2) on one connection
    # Per tenant (the anonymous tenant when auth is off): what one tenant may hold at once.
    max_streams_per_tenant: int = 1024         # open Session/Complete/Edit/Resume calls, per front-end worker
    max_resumes_per_tenant: int = 32           # open Resume calls (each follows a journal), per front-end worker
    max_sessions_per_tenant: int = 4096        # live sessions, across workers (they expire after session_ttl_s)
    # A Session stream whose client sent nothing this long, with no request or resume of it running, ends
    # DEADLINE_EXCEEDED and frees its stream slot (the session itself lives on: Open with its id continues it).
    session_idle_timeout_s: float = 300.0
    # An HTTP door stream (SSE) one of whose writes does not complete within this long (the client stopped
    # reading and the buffers on the way are full) is cut: the connection closes, the request ends and its
    # handler is freed.
    http_write_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise InvalidArgument("security: set both tls_cert_file and tls_key_file (or neither)")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise InvalidArgument("security: tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file too")
        for name in ("api_keys_file", "tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(self, name)
            if path and not Path(path).expanduser().is_file():
                raise InvalidArgument(f"security.{name}: {path!r} is not a readable file")
        for name, most_s in (("key_recheck_s", 300), ("session_idle_timeout_s", 86400), ("http_write_timeout_s", 86400)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.05 <= value <= most_s:
                raise InvalidArgument(f"security.{name} must be in [0.05, {most_s}] seconds, got {value!r}")
        if self.rate_limit_per_s < 0 or self.rate_burst < 0:
            raise InvalidArgument("security: rate_limit_per_s and rate_burst must be >= 0")
        for name in ("max_prompt_bytes", "max_context_files", "max_context_file_bytes",
                     "max_streams_per_connection", "max_streams_per_tenant", "max_resumes_per_tenant",
                     "max_sessions_per_tenant"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"security.{name} must be an integer >= 1, got {value!r}")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys_file) or self.api_keys_in_redis

    @property
    def tls_enabled(self) -> bool:
        return bool(self.tls_cert_file)

    @classmethod
    def from_dict(cls, data: dict) -> "SecurityConfig":
        return from_mapping(cls, data, where="security config")
