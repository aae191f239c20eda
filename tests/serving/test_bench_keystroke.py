"""`flint bench keystroke` end to end at smoke sizes: every key of the issue's schema, and the report."""

from __future__ import annotations

import json

from flint.bench.keystroke import keystroke_bench, write_report


async def test_keystroke_bench_smoke_run_writes_every_key_and_the_budget_table(tmp_path):
    result = await keystroke_bench(contexts=(0, 512), count=2, long_tokens=1024, kv_cache_bytes=1 << 26,
                                   psm_contexts=(512,))
    write_report(result, str(tmp_path))
    data = json.loads((tmp_path / "keystroke.json").read_text())
    for mode in ("document", "full_text"):
        assert set(data["keystroke_ttft_ms"][mode]) == {"0", "512"}
        assert all(v["p50"] > 0 and v["p99"] >= v["p50"] for v in data["keystroke_ttft_ms"][mode].values())
    assert set(data["reprefill_tokens"]["document"]) == {"0", "512"}
    # a one-character keystroke in document mode: the edit and a cursor on the wire, never the text
    assert data["wire_bytes_per_keystroke"]["document"]["p99"] < 200
    assert data["wire_bytes_per_keystroke"]["full_text"]["p99"] > 1000
    assert data["reprefill_tokens"]["document"]["512"]["p99"] <= 16
    assert set(data["under_long_prefill_ttft_ms"]) == {"bulk", "interactive"}
    assert data["idle_ttft_ms"]["p50"] > 0 and "512" in data["kv_read_bound_ms"]
    # prefix-suffix-middle, reported apart: the keystroke re-prefills the suffix window (64) too, within its budget
    assert set(data["psm_keystroke_ttft_ms"]) == {"512"} and data["psm_keystroke_ttft_ms"]["512"]["p50"] > 0
    psm_reprefill = data["psm_per_keystroke"]["512"]["reprefill_tokens"]["p99"]
    assert 64 < psm_reprefill <= 64 + 16
    report = (tmp_path / "keystroke.md").read_text()
    assert "| budget | measured | verdict |" in report and "<= 1 KB on the wire" in report
    assert "Prefix-suffix-middle families" in report
