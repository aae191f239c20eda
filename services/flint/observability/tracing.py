"""OpenTelemetry spans across front-end -> engine replica, tagged with the request id.

flint only uses the OpenTelemetry API: spans are no-ops until the deployment
installs an SDK tracer provider (and exporter) in the process. The front-end
starts `flint.frontend.request` per request and sends its context to the
replica in W3C `traceparent` gRPC metadata; the replica's
`flint.engine.generate` span is its child, so one trace shows both stages.
"""

from __future__ import annotations

from opentelemetry import propagate, trace

REQUEST_ID = "flint.request_id"


def _tracer():
    return trace.get_tracer("flint")


def _exporting() -> bool:
    """An SDK tracer provider is installed; until one is, every span would be a no-op with no context to send."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def start_request_span(request_id: str, kind: str, replica_id: str):
    """The front-end's span of one request (the no-op `INVALID_SPAN`, made for free, while nothing exports: this
    runs before every engine call)."""
    if not _exporting():
        return trace.INVALID_SPAN
    return _tracer().start_span("flint.frontend.request", attributes={
        REQUEST_ID: request_id, "flint.kind": kind, "flint.replica_id": replica_id})


def outgoing_metadata(span) -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying `span`'s context to the next hop (none for a span with no valid context)."""
    if not span.get_span_context().is_valid:
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return tuple(carrier.items())


def start_engine_span(request_id: str, invocation_metadata):
    parent = propagate.extract({k: v for k, v in invocation_metadata or () if isinstance(v, str)})
    return _tracer().start_span("flint.engine.generate", context=parent, attributes={REQUEST_ID: request_id})
