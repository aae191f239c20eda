"""Client figures checked against the server's: Final messages and a real Prometheus endpoint."""

from flint.load.consistency import consistency, scrape
from flint.load.record import RequestRecord


def record(i: int, tokens: int, completion: int, ttft_ms: float, server_first_ms: float) -> RequestRecord:
    return RequestRecord(id=f"r{i}", job=i, step=0, label="x", t_intended_ms=0.0, t_sent_ms=0.0,
                         t_end_ms=ttft_ms + 50, deltas=[[ttft_ms, 1, tokens]], completion_tokens=completion,
                         finish_reason="length", server={"first_token_ms": server_first_ms})


def test_final_messages_confirm_streamed_tokens_and_ttft():
    checks = {c["check"]: c for c in consistency([record(i, 10, 10, 22.0, 20.0) for i in range(5)])}
    assert checks["tokens streamed vs Final.completion_tokens"]["ok"] is True
    assert checks["mean TTFT: client vs server first_token_ms"]["ok"] is True
    bad = {c["check"]: c for c in consistency([record(i, 5, 10, 90.0, 20.0) for i in range(5)])}
    assert bad["tokens streamed vs Final.completion_tokens"]["ok"] is False
    assert bad["mean TTFT: client vs server first_token_ms"]["ok"] is False


def test_tokens_the_final_withholds_count_with_the_streamed_ones():
    records = [record(i, 6, 10, 22.0, 20.0) for i in range(5)]   # 4 tokens each were a stop string, say
    assert {c["check"]: c for c in consistency(records)}["tokens streamed vs Final.completion_tokens"]["ok"] is False
    for r in records:
        r.withheld_tokens = 4
    assert {c["check"]: c for c in consistency(records)}["tokens streamed vs Final.completion_tokens"]["ok"] is True


def test_prometheus_counters_are_compared_as_deltas_over_the_run():
    from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

    registry = CollectorRegistry()
    decode = Counter("flint_engine_decode_tokens", "tokens", ["model"], registry=registry)
    ttft = Histogram("flint_engine_time_to_first_token_seconds", "ttft", ["model"], registry=registry)
    decode.labels("m").inc(1000)       # before the run: other traffic
    ttft.labels("m").observe(5.0)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        before = scrape(url)
        records = [record(i, 10, 10, 22.0, 20.0) for i in range(4)]
        decode.labels("m").inc(40)
        for _ in records:
            ttft.labels("m").observe(0.020)
        after = scrape(url)
    finally:
        server.shutdown()
        thread.join(timeout=5)
    checks = {c["check"]: c for c in consistency(records, before, after)}
    assert checks["generated tokens: Finals vs engine counter"]["server"] == 40
    assert checks["generated tokens: Finals vs engine counter"]["ok"] is True
    assert checks["requests with a first token: client vs engine"]["server"] == 4
    assert abs(checks["mean TTFT: client vs engine histogram"]["server"] - 20.0) < 1e-6
