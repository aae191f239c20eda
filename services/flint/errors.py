"""flint's own exception types.

Every layer raises these; the gRPC edges map them to status codes in one
place (`flint.grpc_status`). Messages say what to change.
"""

from __future__ import annotations


class FlintError(Exception):
    """Base class. `retryable` tells clients whether the same call may succeed."""

    retryable = False

    def __init__(self, message: str, *, retry_after_ms: int = 0):
        super().__init__(message)
        self.message = message
        self.retry_after_ms = retry_after_ms


class InvalidArgument(FlintError):
    """The request is malformed or out of range."""


class NotFound(FlintError):
    """A named request, session or model does not exist."""


class ResourceExhausted(FlintError):
    """Over a limit (queue, KV budget, rate); retry after `retry_after_ms`."""

    retryable = True


class FailedPrecondition(FlintError):
    """The request is valid but the server's state differs from what it assumes (e.g. a document version).

    `document_version` is the server's version of the document the request named (0 when not about one).
    """

    def __init__(self, message: str, *, document_version: int = 0, retry_after_ms: int = 0):
        super().__init__(message, retry_after_ms=retry_after_ms)
        self.document_version = document_version


class Unavailable(FlintError):
    """A dependency (engine replica, Redis) is gone; retrying may succeed."""

    retryable = True


class Unauthenticated(FlintError):
    """No valid credentials."""


class PermissionDenied(FlintError):
    """Valid credentials, but not for this resource."""


class DeadlineExceeded(FlintError):
    """The client's deadline passed."""


class Internal(FlintError):
    """A bug: the message names what broke."""
