"""How the public port is exposed: TLS / mTLS credentials, auth interceptor, per-connection call cap."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from flint.addresses import is_loopback
from flint.errors import InvalidArgument
from flint.security.config import SecurityConfig
from flint.security.connections import HTTP2_BACKSTOP_FACTOR, ConnectionCallCap

log = logging.getLogger(__name__)


def check_plaintext_keys(host: str, config: SecurityConfig) -> None:
    """API keys without TLS: refused on a non-loopback address unless allowed, and always a loud warning."""
    if not config.auth_enabled or config.tls_enabled:
        return
    if not is_loopback(host) and not config.allow_plaintext_keys:
        raise InvalidArgument(f"API keys are on but TLS is off on {host}: keys would cross the network in plaintext. "
                              "Set security.tls_cert_file and tls_key_file, or security.allow_plaintext_keys = true "
                              "if a TLS proxy in front of flint terminates TLS")
    log.warning("SECURITY: API keys are checked without TLS on %s; clients send them in plaintext", host)


def _read(path: str) -> bytes:
    return Path(path).expanduser().read_bytes()


def server_credentials(config: SecurityConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the configured files; mTLS (client certs required) when a client CA is set."""
    if not config.tls_enabled:
        return None
    client_ca = _read(config.tls_client_ca_file) if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(_read(config.tls_key_file), _read(config.tls_cert_file))],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


def bind(server: grpc.aio.Server, address: str, config: SecurityConfig) -> int:
    credentials = server_credentials(config)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def server_options(config: SecurityConfig) -> list[tuple[str, int]]:
    """HTTP/2's stream cap is a backstop far above flint's own per-connection cap (flint.security.connections),
    which answers RESOURCE_EXHAUSTED instead of resetting streams."""
    return [("grpc.max_concurrent_streams", config.max_streams_per_connection * HTTP2_BACKSTOP_FACTOR)]


def interceptors(config: SecurityConfig, *, redis, key_prefix: str) -> list:
    """The auth interceptor when API keys are configured, behind the error mapping its own exceptions need (the
    handlers inside map theirs: flint.frontend.codec); none otherwise, so grpc.aio skips the interceptor
    machinery on every call."""
    keys = key_store(config, redis=redis, key_prefix=key_prefix)
    if keys is None:
        return []
    from flint.grpc_status import ErrorInterceptor
    from flint.security.auth import AuthInterceptor

    return [ErrorInterceptor(), AuthInterceptor(keys)]


def call_cap(config: SecurityConfig) -> ConnectionCallCap:
    """The public service's per-connection call cap (flint.frontend.codec holds it around each call)."""
    return ConnectionCallCap(config.max_streams_per_connection)


def key_store(config: SecurityConfig, *, redis, key_prefix: str):
    """The API keys of the deployment (file and/or Redis), or None when authentication is off.

    One store per worker process, used by both of its public doors (gRPC and HTTP).
    """
    if not config.auth_enabled:
        return None
    from flint.security.keystore import KeyStore

    return KeyStore(key_file=config.api_keys_file, redis=redis if config.api_keys_in_redis else None,
                    key_prefix=key_prefix, recheck_s=config.key_recheck_s)
