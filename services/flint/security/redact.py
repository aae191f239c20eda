"""Credentials never leave in a message: one helper strips them from any text, and log records pass through it.

URLs carry credentials as userinfo (`redis://user:password@host`) or as a
`password=` query parameter; both are replaced by `***`. `redact` is applied
where a message is built from a URL (Redis errors, start-up lines, status
output) and, as a backstop, to every status message a flint server sends
(`flint.grpc_status.abort_with`) and to every log record of a flint server
process (`install_log_redaction`).
"""

from __future__ import annotations

import logging
import re

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]+@")
_PASSWORD_PARAM = re.compile(r"(?P<key>[?&;](?:password|passwd|pwd|token)=)[^&\s#;]*", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URL userinfo and password parameters replaced by `***`."""
    if "@" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['key']}***", text)


_installed = False


def install_log_redaction() -> None:
    """Redact every log record this process creates from now on (idempotent).

    A record factory rather than a handler filter: it covers handlers added
    later (Ray's, pytest's) and records of every logger.
    """
    global _installed
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is the logging module's to report
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(factory)


class RedactingFormatter(logging.Formatter):
    """Redacts the whole formatted line (tracebacks included) of the formatter it wraps."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self._inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return redact(self._inner.format(record))


_TAKEOVER = re.compile(r"#takeover-[0-9a-f]+")


def unscoped(text: str, tenant: str) -> str:
    """`text` with `tenant`'s internal request ids (`tenant/id`, and a takeover's `#takeover-...` suffix) in
    the form its client knows (`id`): clients never see how flint scopes ids inside."""
    if not tenant or "/" not in text and "#takeover-" not in text:
        return text
    text = re.sub(rf"(?<![A-Za-z0-9._/-]){re.escape(tenant)}/(?=[A-Za-z0-9._:-])", "", text)
    return _TAKEOVER.sub("", text)
