"""Authentication of the internal engine API (front-end worker -> engine replica).

A replica's gRPC server answers only callers that present the deployment's
shared secret in the `x-flint-internal-token` metadata; the front-end's
channels to replicas add it to every call. Health checks stay open for
probes. Without this, anyone who can reach a replica could run `Generate`
with another tenant's `cache_namespace` (and read its prefix-cache hits):
the tenant fields of the internal API are only trustworthy because the
caller is an authenticated front-end. The replica's engine link
(flint.link, the workers' default hop for `Generate`) checks the same
secret, sent as the first frame of each connection.

Where the secret comes from, first match wins:
  1. `internal_token` of the component's config (set by `flint serve`, which
     makes a fresh one per run for the replicas and workers it starts);
  2. the file named by `internal_token_file` of the config;
  3. the environment: `FLINT_INTERNAL_TOKEN`, else the file named by
     `FLINT_INTERNAL_TOKEN_FILE` (cluster deploys: a secret mounted on every
     node, see cluster/README.md).
A replica refuses to start without one. The secret travels in plaintext
(metadata, the link's first frame), so replicas bind a private interface (loopback, or the node IP
Ray reports), never a wildcard address.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

import grpc

from flint import env
from flint.errors import InvalidArgument

TOKEN_ENV = env.INTERNAL_TOKEN
TOKEN_FILE_ENV = env.INTERNAL_TOKEN_FILE
METADATA_KEY = "x-flint-internal-token"
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
_MIN_TOKEN_CHARS = 16


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _read_token_file(path: str, where: str) -> str:
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InvalidArgument(f"{where}: cannot read the internal token file {path!r} ({exc.strerror})") from None
    return token


def resolve_token(*, token: str = "", token_file: str = "") -> str:
    """The internal API secret from the config's values, else the environment ("" when none is set)."""
    if token:
        found = token
    elif token_file:
        found = _read_token_file(token_file, "internal_token_file")
    elif env.internal_token():
        found = env.internal_token()
    elif env.internal_token_file():
        found = _read_token_file(env.internal_token_file(), TOKEN_FILE_ENV)
    else:
        return ""
    if len(found) < _MIN_TOKEN_CHARS:
        raise InvalidArgument(f"the internal API token must be at least {_MIN_TOKEN_CHARS} characters "
                              "(make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return found


def require_token(*, token: str = "", token_file: str = "") -> str:
    """`resolve_token`, refusing to go on without one (a replica never serves its API unauthenticated)."""
    found = resolve_token(token=token, token_file=token_file)
    if not found:
        raise InvalidArgument(
            f"engine replicas and front-end workers need the deployment's internal API token: set {TOKEN_ENV} (or "
            f"{TOKEN_FILE_ENV}, or internal_token_file in their config) to the same secret on the replicas and the "
            "front-end workers; `flint serve` makes one itself")
    return found


def ensure_process_token() -> str:
    """For in-process deployments (benchmarks, soak): use the environment's token, or make one for this process
    and the processes it starts."""
    token = resolve_token()
    if not token:
        token = os.environ[TOKEN_ENV] = new_token()
    return token


def token_matches(expected: str, metadata) -> bool:
    for key, value in metadata or ():
        if key == METADATA_KEY:
            presented = value.encode() if isinstance(value, str) else bytes(value)
            return hmac.compare_digest(presented, expected.encode())
    return False


class InternalAuthInterceptor(grpc.aio.ServerInterceptor):
    """UNAUTHENTICATED for every call but health checks unless it carries the deployment's token."""

    def __init__(self, token: str):
        self._token = token

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if token_matches(self._token, handler_call_details.invocation_metadata):
            return handler
        from flint.security.auth import deny_handler

        return deny_handler(handler, "this is an internal flint API: calls need the deployment's internal token")


class EngineClient:
    """The internal Engine stub of one channel, adding the token to every call.

    A thin wrapper rather than a client interceptor: grpc.aio interceptors put
    an extra layer around every streamed message, and this path carries every
    token the engine produces.
    """

    def __init__(self, channel: grpc.aio.Channel, token: str):
        from flint.internal.v1 import engine_pb2_grpc

        self._stub = engine_pb2_grpc.EngineStub(channel)
        self._pair = (METADATA_KEY, token)

    def _metadata(self, metadata) -> tuple:
        return (*(metadata or ()), self._pair)

    def Generate(self, request, *, metadata=None, **kwargs):  # noqa: N802 - the RPC's name
        return self._stub.Generate(request, metadata=self._metadata(metadata), **kwargs)

    def Load(self, request, *, metadata=None, **kwargs):  # noqa: N802
        return self._stub.Load(request, metadata=self._metadata(metadata), **kwargs)
