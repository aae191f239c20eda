"""How the public port is exposed: TLS / mTLS credentials, auth interceptor, per-connection stream cap."""

from __future__ import annotations

from pathlib import Path

import grpc

from flint.security.config import SecurityConfig


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
    return [("grpc.max_concurrent_streams", config.max_streams_per_connection)]


def interceptors(config: SecurityConfig, *, redis, key_prefix: str) -> list:
    """The auth interceptor when API keys are configured (none otherwise)."""
    if not config.auth_enabled:
        return []
    from flint.security.auth import AuthInterceptor, KeyStore, read_key_file

    file_keys = read_key_file(config.api_keys_file) if config.api_keys_file else {}
    return [AuthInterceptor(KeyStore(file_keys=file_keys, redis=redis if config.api_keys_in_redis else None,
                                     key_prefix=key_prefix))]
