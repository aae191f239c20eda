"""`flint bench engine --quick` runs end to end and writes every figure the issue asks for."""

import json
import sys

import pytest

from flint.bench.engine import main


@pytest.mark.slow
def test_quick_bench_writes_all_figures(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)     # without the test extra: HF column skipped
    assert main(["--quick", "--skip-compile", "--out-dir", str(tmp_path / "out"),
                 "--models-dir", str(tmp_path / "models")]) == 0
    r = json.loads((tmp_path / "out" / "engine.json").read_text())
    assert r["machine"]["cores"] >= 1 and r["machine"]["cpu_model"]
    assert r["model"]["params"] > 0 and r["model"]["bytes"] == 4 * r["model"]["params"]
    assert r["decode_tok_s"]["flint"] > 0 and r["bandwidth_bound_tok_s"] > 0
    assert r["host_overhead_ms_per_step"] > 0
    assert "transformers not installed" in r["hf_note"] and "hf" not in r["decode_tok_s"]
    assert {"flint", "flint_int8", "flint_int4", "llamacpp_f32", "llamacpp_q8_0", "llamacpp_q4_0"} <= set(
        r["decode_tok_s"])
    assert r["threads"]["one"] > 0 and r["threads"]["default"] > 0 and r["threads"]["loaded"]["one"] > 0
    fp32 = r["precisions"]["fp32"]
    # tied embeddings: every weight but the norm vectors is read per token
    assert 0.99 * r["model"]["bytes"] < fp32["weight_bytes_read_per_token"] <= r["model"]["bytes"]
    for precision, bits in (("int8", 8), ("int4", 4)):
        read = r["precisions"][precision]["weight_bytes_read_per_token"]
        assert read < fp32["weight_bytes_read_per_token"] * (bits + 4) / 32      # packed weights + scales
    assert fp32["pct_of_bound"] > 0 and fp32["aggregate_tok_s"]["16"] > 0 and fp32["step_profile"]
    for n in ("1", "16"):        # a decode step of 1 and of 16 streams split into its model and host parts
        step = fp32["decode_step_ms"][n]
        assert step["step_ms"] > 0 and 0 < step["forward_ms"] < step["step_ms"] and step["host_ms"] > 0
    assert fp32["decode_step_ms"]["16"]["forward_ms"] > fp32["decode_step_ms"]["1"]["forward_ms"]
    from flint.engine import kernels
    fma = "fma512" if kernels.load("skinny_f32").fma_width() == 16 else "fma256"   # the fp32 kernel's FMA here
    for precision, instruction in (("fp32", fma), ("int8", "vpdpbusd512"), ("int4", "vpdpbusd512")):
        pass16 = r["precisions"][precision]["linear_16_rows"]     # the 16-row pass against the instruction's peak
        assert pass16["instruction"] == instruction and pass16["instructions"] > 0 and pass16["per_s"] > 0
        assert pass16["machine_peak_per_s"] is None or pass16["machine_peak_per_s"] >= 0
    assert set(r["aggregate_tok_s"]) == {"1", "4", "16"}
    assert set(r["keystroke_ttft_ms"]) == {"cached", "no_context", "no_prefix_cache"}
    assert len(r["prefill_tok_s"]) == 3 and all(v > 0 for v in r["prefill_tok_s"].values())
    spec = r["spec_decode"]
    assert spec["outputs_match"] is True and spec["accepted_per_step"] >= 0 and spec["speedup"] > 0
    md = (tmp_path / "out" / "engine.md").read_text()
    assert "flint / bound" in md and "keystroke TTFT" in md


def test_a_missed_16_stream_budget_states_the_ceiling_at_the_instruction_peak():
    """The report says what the 16-row pass would take at the machine's peak for its instruction, and the
    ratio that leaves the Linears against the one-row pass: whether the hardware or the kernels bound it."""
    from flint.bench.engine_report import precision_budgets

    int4 = {"weight_bytes_read_per_token": 11 << 20, "pct_of_bound": 13.0, "read_bandwidth_gb_s_at_weight_size": 160.0,
            "step_profile": [], "aggregate_16_vs_1": 2.5, "linear_pass_us": {"1": 200.0, "16": 1600.0},
            "linear_16_rows": {"per_s": 3.5e9, "pct_of_peak": 50.0, "machine_peak_per_s": 7e9,
                               "instruction": "vpdpbusd512"}}
    r = {"decode_tok_s": {"flint_int4": 2000.0}, "precisions": {"int4": int4}, "llamacpp": {}}
    why = precision_budgets(r)["aggregate_16_vs_1_int4"]["bound_by"]
    # 1600 us at 50% of the peak is 800 us at the peak; 16 x 200 / 800 = 4.0
    assert "at that peak the 16-row pass would take 800 us" in why and "allow at most 4.0x" in why


def test_a_missed_16_stream_budget_splits_the_decode_step_into_model_and_host():
    from flint.bench.engine_report import precision_budgets

    int8 = {"weight_bytes_read_per_token": 21 << 20, "pct_of_bound": 20.0, "read_bandwidth_gb_s_at_weight_size": 90.0,
            "step_profile": [], "aggregate_16_vs_1": 3.5, "linear_pass_us": {"1": 250.0, "16": 1400.0},
            "decode_step_ms": {"1": {"step_ms": 0.5, "forward_ms": 0.4, "host_ms": 0.1},
                               "16": {"step_ms": 2.0, "forward_ms": 1.6, "host_ms": 0.4}}}
    r = {"decode_tok_s": {"flint_int8": 2000.0}, "precisions": {"int8": int8}, "llamacpp": {}}
    why = precision_budgets(r)["aggregate_16_vs_1_int8"]["bound_by"]
    assert ("a decode step of 16 streams took 2.00 ms (1.60 model, 0.40 host) against one stream's 0.50 ms "
            "(0.40 model, 0.10 host): 4.0x per decode step, the model part 4.0x and the host part 4.0x") in why
