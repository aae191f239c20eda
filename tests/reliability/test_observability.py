"""Observability: Prometheus /metrics of front-ends and replicas, structured JSON logs with the request id."""

import json
import logging
import urllib.request

from flint.client import FlintClient
from flint.observability.setup import JsonFormatter


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


async def test_metrics_endpoints_expose_stage_latency_redis_and_replica_load(cluster):
    server, _ = await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1", observability={"metrics_port": 0})
    async with FlintClient(worker.address) as client:
        await client.complete_text("metrics", max_tokens=3)
        [m async for m in client.resume((await _last_request(client)), 0)]
    text = scrape(worker.metrics_port)
    for stage in ("route", "admit", "register", "total"):
        assert f'flint_frontend_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'flint_redis_call_seconds_count{op="journal_flush"}' in text
    assert 'flint_frontend_requests_total{kind="complete",outcome="finished"}' in text
    assert "flint_resumes_total" in text
    # Replicas in this test share the process registry; their gauges and counters are in the same scrape.
    assert "flint_replica_running" in text and 'flint_replica_generate_total{outcome="finished"}' in text


async def _last_request(client) -> str:
    messages = [m async for m in client.complete("again", max_tokens=2)]
    return messages[0].accepted.request_id


def test_json_log_lines_carry_the_request_id():
    record = logging.LogRecord("flint.frontend.relay", logging.WARNING, __file__, 1, "relay of %s failed", ("r-1",),
                               None)
    record.request_id = "r-1"
    record.tenant = "tenant-a"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "relay of r-1 failed" and line["request_id"] == "r-1"
    assert line["tenant"] == "tenant-a" and line["level"] == "WARNING"


async def test_trace_spans_link_front_end_and_engine_with_the_request_id(cluster):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # what a deployment does to export spans
    await cluster.add_replica("r1")
    worker = await cluster.add_worker("w1")
    async with FlintClient(worker.address) as client:
        await client.complete_text("traced", max_tokens=2, request_id="traced-1")

    def spans():
        return {s.name: s for s in exporter.get_finished_spans() if s.attributes.get("flint.request_id") == "traced-1"}

    from rel_support import eventually

    await eventually(lambda: len(spans()) == 2)
    front, engine = spans()["flint.frontend.request"], spans()["flint.engine.generate"]
    assert engine.context.trace_id == front.context.trace_id and engine.parent.span_id == front.context.span_id
