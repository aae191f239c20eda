"""`flint bench engine --quick` runs end to end and writes every figure the issue asks for."""

import json

import pytest

from flint.bench.engine import main


@pytest.mark.slow
def test_quick_bench_writes_all_figures(tmp_path):
    assert main(["--quick", "--skip-hf", "--skip-compile", "--out-dir", str(tmp_path / "out"),
                 "--models-dir", str(tmp_path / "models")]) == 0
    r = json.loads((tmp_path / "out" / "engine.json").read_text())
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu_model"]
    assert r["model"]["params"] > 0 and r["model"]["bytes"] == 4 * r["model"]["params"]
    assert r["decode_tok_s"]["flint"] > 0 and r["bandwidth_bound_tok_s"] > 0
    assert r["host_overhead_ms_per_step"] > 0
    assert set(r["aggregate_tok_s"]) == {"1", "4", "16"}
    assert set(r["keystroke_ttft_ms"]) == {"cached", "no_context", "no_prefix_cache"}
    assert len(r["prefill_tok_s"]) == 3 and all(v > 0 for v in r["prefill_tok_s"].values())
    spec = r["spec_decode"]
    assert spec["outputs_match"] is True and spec["accepted_per_step"] >= 0 and spec["speedup"] > 0
    md = (tmp_path / "out" / "engine.md").read_text()
    assert "flint / bound" in md and "keystroke TTFT" in md
