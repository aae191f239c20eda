"""`flint bench cluster`'s budget table: issue 12's keys, and a budget is met only by what it names."""

from flint.bench.cluster import budgets, write_markdown


def result(*, detect_s, outcomes, interrupts=200, p99=8.0, late=0):
    return {
        "quick": False, "elapsed_s": 1.0, "load_average_start": [0.5, 0.5, 0.5], "load_average_end": [0.6, 0.5, 0.5],
        "model": {"path": "m", "layers": 1, "hidden": 8, "heads": 1, "kv_heads": 1, "vocab": 16},
        "machine": {"cpu_model": "cpu", "cores": 2, "torch": "2"},
        "step_overhead": {"2 shards PP": {"shards": 2, "step_ms": {"p50": 1, "p90": 1}, "overhead_ms": 0.1,
                                          "tokens_equal_local": True}},
        "cross_worker_interrupt": {"to_stream_end_ms": {"p50": 3.0, "p90": 5.0, "p99": p99, "n": interrupts},
                                   "deltas_after_ack": late, "samples_stuck": []},
        "relay_overhead": {"ttft_via_frontend_ms": {"p50": 2.0}, "ttft_direct_ms": {"p50": 1.5},
                           "added_ttft_ms": {"p50": 0.5, "p90": 0.7, "p99": 0.9, "n": 200}},
        "relay_throughput": {"tokens_per_s_per_worker": 21000, "engine_deltas_per_s": 21000,
                             "client_messages_per_s": 3000, "worker_cpu_fraction": 0.9, "worker_cpu_us_per_delta": 40,
                             "engine_deltas_per_worker_cpu_s": 23000, "streams": 8, "seconds": 5.0},
        "frozen_replica": {"detect_s": detect_s, "outcomes": outcomes, "limit_s": 45.0},
        "frozen_replica_detect_s": max(detect_s) if detect_s else None,
    }


def test_every_budget_met_is_reported_met(tmp_path):
    r = result(detect_s=[2.1, 2.4], outcomes=["UNAVAILABLE", "UNAVAILABLE"])
    b = r["budgets"] = budgets(r)
    assert {k: v["met"] for k, v in b.items()} == {
        "sharding_overhead_ms_per_step": True, "cross_worker_interrupt_p99_ms": True, "relay_added_ttft_p50_ms": True,
        "relay_tokens_per_s_per_worker": True, "frozen_replica_detect_s": True}
    assert b["frozen_replica_detect_s"]["value"] == 2.4
    write_markdown(tmp_path / "d.md", r)
    text = (tmp_path / "d.md").read_text()
    assert "added TTFT p50 0.5 ms, p99 0.9 ms" in text and "2.4 s (UNAVAILABLE)" in text and "[0.5, 0.5, 0.5]" in text


def test_a_frozen_replica_never_detected_or_too_few_interrupts_miss_their_budgets():
    b = budgets(result(detect_s=[45.0], outcomes=["still open after 45 s"], interrupts=100))
    assert not b["frozen_replica_detect_s"]["met"] and not b["cross_worker_interrupt_p99_ms"]["met"]
    b = budgets(result(detect_s=[1.0], outcomes=["ended with no error"], late=1))
    assert not b["frozen_replica_detect_s"]["met"], "a stream that ended without UNAVAILABLE was not detected"
    assert not b["cross_worker_interrupt_p99_ms"]["met"], "a delta after the acknowledgement"


def test_the_bare_proxy_floor_is_reported_beside_the_added_ttft(tmp_path):
    r = result(detect_s=[2.0], outcomes=["UNAVAILABLE"])
    r["relay_overhead"].update({"ttft_bare_grpc_proxy_ms": {"p50": 1.8},
                                "bare_grpc_proxy_added_ttft_ms": {"p50": 0.3, "p90": 0.4, "p99": 0.6, "n": 200},
                                "flint_over_bare_proxy_ms": {"p50": 0.2, "p90": 0.3, "p99": 0.5, "n": 200}})
    r["budgets"] = budgets(r)
    assert "bare grpc.aio proxy) add p50 0.3 ms; flint's own share p50 0.2 ms" in (
        r["budgets"]["relay_added_ttft_p50_ms"]["note"])
    write_markdown(tmp_path / "d.md", r)
    text = (tmp_path / "d.md").read_text()
    assert "added p50 0.3 ms, p99 0.6 ms over the direct call; the worker added p50 0.2 ms, p99 0.5 ms" in text
