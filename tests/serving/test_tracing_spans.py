"""Request spans cost nothing until a deployment installs an OpenTelemetry SDK (tests/reliability/test_observability
covers the spans and their link to the engine's once one is installed)."""

import subprocess
import sys
import textwrap

_CHECK = textwrap.dedent("""
    from opentelemetry import trace
    from flint.observability import tracing

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), "a tracer provider is installed"
    span = tracing.start_request_span("tenant/r-1", "complete", "replica-1")
    assert not span.is_recording() and not span.get_span_context().is_valid
    assert tracing.outgoing_metadata(span) == ()
    span.set_attribute("flint.outcome", "finished")   # what the servicer does at the end: a no-op
    span.end()
""")


def test_without_a_tracer_provider_a_request_span_records_nothing_and_sends_no_trace_context():
    # A fresh interpreter: a tracer provider, once another test installed it, cannot be removed from this one.
    done = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
