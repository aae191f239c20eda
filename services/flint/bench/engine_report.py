"""Budgets and the readable report of `flint bench engine`."""

from __future__ import annotations

from pathlib import Path


def _budget(value: float | None, budget: float, higher_is_better: bool, unit: str, bound_by: str) -> dict:
    if value is None:
        return {"value": None, "budget": budget, "met": False, "note": "not measured in this run"}
    met = value >= budget if higher_is_better else value <= budget
    out = {"value": value, "budget": budget, "unit": unit, "met": met}
    if not met:
        out["missed_by"] = (budget / value if higher_is_better else value / budget) if value else None
        out["bound_by"] = bound_by
    return out


def budgets(r: dict) -> dict:
    d = r["decode_tok_s"]
    step = r["bench_step"]
    hf = d.get("hf")
    agg = r["aggregate_tok_s"]
    k = r["keystroke_ttft_ms"]
    g = r["gemm_us_by_rows"]
    gemm = ", ".join(f"{rows} row(s) {us:.0f} us" for rows, us in g.items())
    skinny = (f"on this CPU flint's fp32 kernel over the model's gate/up shape takes {gemm}: "
              f"16 rows cost {g['16'] / g['1']:.1f}x one row (FMA and load throughput of 2 cores), so batching "
              f"streams (and verifying draft tokens) buys far less than on a GPU")
    per_token_ms = 1e3 / d["flint"]
    bound_ms = 1e3 / r["bandwidth_bound_tok_s"]
    decode_why = (
        f"one decode step takes {per_token_ms:.2f} ms against {bound_ms:.2f} ms to stream the weights at the "
        f"measured bandwidth; the model forward alone is {step['forward_ms']:.2f} ms and the engine around it "
        f"{step['host_ms']:.2f} ms. The forward is one native call per layer (README: Engine) plus the embedding, "
        f"rotation, final norm and lm_head; its GEMVs stream the weights from DRAM"
    )
    out = {
        "decode_vs_bandwidth_bound": _budget(d["flint"] / r["bandwidth_bound_tok_s"], 0.8, True, "fraction",
                                             decode_why),
        "decode_vs_hf": _budget(d["flint"] / hf if hf else None, 2.5, True, "x",
                                f"HF generate() already runs at {hf / r['bandwidth_bound_tok_s'] * 100:.0f}% of the "
                                f"bandwidth bound and flint at {d['flint'] / r['bandwidth_bound_tok_s'] * 100:.0f}%: "
                                "2.5x HF would need flint above the bound" if hf and hf * 2.5 > r["bandwidth_bound_tok_s"]
                                else "see decode_vs_bandwidth_bound: the same per-op and GEMV costs bound both"),
        "host_overhead_ms_per_step": _budget(
            r["host_overhead_ms_per_step"], 0.3, False, "ms",
            "Python per step: scheduling, building the step's index tensors, argmax host transfer, "
            "detokenizer, event objects"),
        "aggregate_16_vs_1": _budget(agg["16"] / agg["1"], 4.0, True, "x", skinny),
        "keystroke_cached_vs_no_context": _budget(
            k["cached"] / k["no_context"], 1.5, False, "x",
            "the 16 new tokens attend to the whole 8K cached context: attention over 8K keys per layer, "
            "plus gathering those keys from the paged cache"),
    }
    out.update(precision_budgets(r))
    return out


def _profile_text(p: dict) -> str:
    prof = ", ".join(f"{x['op']} {x['pct']:.0f}%" for x in p.get("step_profile", [])[:3])
    return (f"{p['weight_bytes_read_per_token'] / 2**20:.1f} MiB of weights per token at "
            f"{p['pct_of_bound']:.0f}% of the {p['read_bandwidth_gb_s_at_weight_size']:.1f} GB/s read bandwidth "
            f"of a buffer that size; decode step profile (self CPU): {prof}")


def precision_budgets(r: dict) -> dict:
    """Issue 11: each flint precision >= llama.cpp at the matching one; int4 >= 1,000 tok/s; 16 streams >= 4x."""
    d, per, out = r["decode_tok_s"], r["precisions"], {}
    for precision, flint_key, ll in (("fp32", "flint", "f32"), ("int8", "flint_int8", "q8_0"),
                                     ("int4", "flint_int4", "q4_0")):
        mine, theirs, p = d.get(flint_key), d.get(f"llamacpp_{ll}"), per.get(precision, {})
        ratio = mine / theirs if mine and theirs else None
        bound = _profile_text(p) if mine else ""
        out[f"{precision}_vs_llamacpp_{ll}"] = _budget(ratio, 1.0, True, "x", bound)
        if ratio is None:
            out[f"{precision}_vs_llamacpp_{ll}"]["note"] = (
                p.get("note") or r["llamacpp"].get("note") or "not measured in this run")
        if precision == "int4":
            out["int4_decode_tok_s"] = _budget(mine, 1000.0, True, "tok/s", bound)
        if mine:
            lp = p.get("linear_pass_us") or {}
            why = (f"one pass through the model's Linears on flint's kernels takes {lp['1']:.0f} us at 1 row and "
                   f"{lp['16']:.0f} us at 16 ({lp['16'] / lp['1']:.1f}x): on the Linears alone 16 streams run at "
                   f"most {16 * lp['1'] / lp['16']:.1f}x one stream's rate" if lp.get("1") and lp.get("16")
                   else "a Linear over 16 rows costs several times one row on this CPU (gemm_us_by_rows)")
            peak = p.get("linear_16_rows") or {}
            if peak.get("pct_of_peak"):
                why += (f"; the 16-row pass runs {peak['per_s'] / 1e9:.2f}G {peak['instruction']} per second, "
                        f"{peak['pct_of_peak']:.0f}% of the {peak['machine_peak_per_s'] / 1e9:.2f}G this machine's "
                        f"threads reach on that instruction alone (the rest: loads, unpacking, scales, sums)")
                if lp.get("1") and lp.get("16"):   # the hardware's ceiling: the 16-row pass at that peak
                    at_peak = lp["16"] * peak["pct_of_peak"] / 100
                    why += (f"; at that peak the 16-row pass would take {at_peak:.0f} us, so against this run's "
                            f"one-row pass the Linears alone allow at most {16 * lp['1'] / at_peak:.1f}x")
            steps = p.get("decode_step_ms") or {}
            if steps.get("1") and steps.get("16"):   # where the 16-stream step's time goes, beside one stream's
                one, six = steps["1"], steps["16"]
                why += (f"; a decode step of 16 streams took {six['step_ms']:.2f} ms ({six['forward_ms']:.2f} model, "
                        f"{six['host_ms']:.2f} host) against one stream's {one['step_ms']:.2f} ms "
                        f"({one['forward_ms']:.2f} model, {one['host_ms']:.2f} host): "
                        f"{16 * one['step_ms'] / six['step_ms']:.1f}x per decode step, the model part "
                        f"{six['forward_ms'] / one['forward_ms']:.1f}x and the host part "
                        f"{six['host_ms'] / one['host_ms']:.1f}x one stream's")
            i8, i4 = (per.get(q, {}).get("linear_pass_us", {}).get("16") for q in ("int8", "int4"))
            if precision != "fp32" and i8 and i4:
                why += (f"; 16-row passes: int8 {i8:.0f} us, int4 {i4:.0f} us for half the bytes, so reading the "
                        "weights is not what bounds them")
            out[f"aggregate_16_vs_1_{precision}"] = _budget(p["aggregate_16_vs_1"], 4.0, True, "x", why)
    return out


def _precision_rows(r: dict, row, mark) -> None:
    d, per, ll = r["decode_tok_s"], r["precisions"], r["llamacpp"]

    def tok(v):
        return f"{v:.1f}" if v else "not available"

    for precision, flint_key, q in (("fp32", "flint", "f32"), ("int8", "flint_int8", "q8_0"),
                                    ("int4", "flint_int4", "q4_0")):
        p = per.get(precision, {})
        mine = d.get(flint_key)
        detail = (f" ({p['weight_bytes_read_per_token'] / 2**20:.1f} MiB read/token, {p['pct_of_bound']:.0f}% of "
                  f"{p['bound_tok_s']:.0f} tok/s bound; 16 streams {p['aggregate_tok_s']['16']:.0f} tok/s = "
                  f"{p['aggregate_16_vs_1']:.1f}x one; Linears {p['linear_pass_us']['1']:.0f} us at 1 row, "
                  f"{p['linear_pass_us']['16']:.0f} us at 16)") if mine else ""
        row(f"flint {precision} decode (tok/s)", tok(mine) + detail if mine else p.get("note", "not available"))
        theirs = d.get(f"llamacpp_{q}")
        row(f"llama.cpp {q} decode (tok/s)", tok(theirs) if theirs else ll.get("note", "not available"))
        row(f"flint {precision} / llama.cpp {q}", f"{mine / theirs:.2f}x" if mine and theirs else "-", ">= 1.0x",
            mark(f"{precision}_vs_llamacpp_{q}"))
        if mine:
            row(f"16 streams / 1 stream, {precision}", f"{p['aggregate_16_vs_1']:.2f}x", ">= 4x",
                mark(f"aggregate_16_vs_1_{precision}"))
    row("flint int4 decode >= 1,000 tok/s", tok(d.get("flint_int4")), ">= 1000", mark("int4_decode_tok_s"))
    if ll.get("available"):
        row("llama.cpp f32: leading greedy tokens equal to flint fp32",
            f"{ll.get('f32_leading_tokens_equal_to_flint_fp32')} (checks both run the same model)")


def write_markdown(path: Path, r: dict) -> None:
    mi, d, b = r["model"], r["decode_tok_s"], r["budgets"]
    lines = [
        "# flint engine benchmark",
        "",
        "Written by `flint bench engine`" + (" --quick (smoke sizes: NOT figures to quote)" if r["quick"] else "")
        + f"; run time {r['elapsed_s']:.0f} s. All figures come from one process run on one machine.",
        "",
        f"- Machine: {r['machine']['cpu_model']}, {r['machine']['cores']} cores, torch {r['machine']['torch']}; "
        f"figures at {r['engine_threads']} torch thread(s) "
        + ("(the engine default: the cores given)" if r['engine_threads'] == r['threads']['default_count']
           else f"(--threads; the engine default here is {r['threads']['default_count']})")
        + "; llama.cpp runs with the same count. "
        f"Load average (1 min) {r['machine'].get('load_avg_1m_at_start', float('nan')):.1f} at start, "
        f"{r['machine'].get('load_avg_1m_at_end', float('nan')):.1f} at end: other processes shared the cores.",
        f"- Benchmark model (random weights, fp32, made by the command): {mi['params'] / 1e6:.1f}M params, "
        f"{mi['bytes'] / 2**20:.1f} MiB; {mi['layers']} layers, d={mi['hidden']}, {mi['heads']} heads / "
        f"{mi['kv_heads']} KV heads, MLP {mi['intermediate']}, vocab {mi['vocab']}; "
        f"{mi['weight_bytes_read_per_token'] / 2**20:.1f} MiB of weights read per decode token.",
        f"- Long-context model (prefill figures): {r['long_model']['params'] / 1e6:.2f}M params, "
        f"{r['long_model']['layers']} layers, d={r['long_model']['hidden']}, {r['long_model']['heads']} heads of "
        f"64: small so that the 131,072-token prefill (attention cost ~ length^2) finishes in minutes on 2 cores.",
        f"- Read bandwidth (best of several large reductions on all cores): {r['bandwidth_gb_s']:.1f} GB/s.",
        "",
        "| figure | value | budget | met |",
        "| --- | --- | --- | --- |",
    ]

    def row(name, value, budget="", met=""):
        lines.append(f"| {name} | {value} | {budget} | {met} |")

    def mark(key):
        x = b[key]
        if x.get("value") is None:
            return "not measured"
        return "yes" if x["met"] else f"no (missed by {x['missed_by']:.1f}x)"

    th = r["threads"]
    row("single-stream decode fp32, 1 thread / default "
        f"({th['default_count']}) threads (tok/s)", f"{th['one']:.1f} / {th['default']:.1f} "
        f"(load avg {th['load_avg_1m']:.1f})")
    lo = th["loaded"]
    row(f"the same under {lo['burner_processes']} CPU burner process(es) (tok/s)",
        f"{lo['one']:.1f} / {lo['default']:.1f} (load avg {lo['load_avg_1m']:.1f})")
    row("single-stream decode, flint fp32 (tok/s)", f"{d['flint']:.1f}")
    row("single-stream decode, HF generate() (tok/s)", f"{d['hf']:.1f}" if "hf" in d else
        r.get("hf_note", "skipped"))
    row("flint / HF", f"{d['flint'] / d['hf']:.2f}x" if "hf" in d else "-", ">= 2.5x", mark("decode_vs_hf"))
    _precision_rows(r, row, mark)
    row("bandwidth bound (tok/s)", f"{r['bandwidth_bound_tok_s']:.1f}")
    row("flint / bound", f"{r['decode_pct_of_bound']:.0f}%", ">= 80%", mark("decode_vs_bandwidth_bound"))
    row("host overhead per step, batch 1, micro model (ms)", f"{r['host_overhead_ms_per_step']:.3f} "
        f"(step {r['micro_step']['step_ms']:.3f}, forward {r['micro_step']['forward_ms']:.3f})", "<= 0.3",
        mark("host_overhead_ms_per_step"))
    row("host overhead per step, batch 1, bench model (ms)", f"{r['bench_step']['host_ms']:.3f} "
        f"(step {r['bench_step']['step_ms']:.3f}, forward {r['bench_step']['forward_ms']:.3f})")
    for n, v in r["aggregate_tok_s"].items():
        row(f"aggregate decode, {n} streams (tok/s)", f"{v:.1f}")
    agg = r["aggregate_tok_s"]
    row("16 streams / 1 stream", f"{agg['16'] / agg['1']:.2f}x", ">= 4x", mark("aggregate_16_vs_1"))
    k = r["keystroke_ttft_ms"]
    ctx = r["keystroke_context_tokens"]
    row(f"keystroke TTFT, {ctx}-token cached prefix + 16 new (ms)", f"{k['cached']:.1f}")
    row("TTFT, 16-token prompt, no context (ms)", f"{k['no_context']:.1f}")
    row(f"keystroke TTFT without prefix cache ({ctx} + 16 prefilled) (ms)", f"{k['no_prefix_cache']:.1f}")
    row("cached / no context", f"{k['cached'] / k['no_context']:.2f}x", "<= 1.5x",
        mark("keystroke_cached_vs_no_context"))
    for n, v in r["prefill_tok_s"].items():
        row(f"prefill {int(n):,} tokens, long-context model (tok/s)", f"{v:.0f}")
    s = r["spec_decode"]
    row("speculative edit: accepted draft tokens per step", f"{s['accepted_per_step']:.2f} "
        f"({s['accepted_draft_tokens']}/{s['draft_tokens']} drafts accepted; {s['tokens_per_step']:.2f} tokens/step)")
    row("speculative edit: speedup over plain decode", f"{s['speedup']:.2f}x ({s['spec_tok_s']:.1f} vs "
        f"{s['plain_tok_s']:.1f} tok/s)")
    row("speculative edit: outputs identical to plain greedy", str(s["outputs_match"]))
    row("fp32 Linear time by rows (us), gate/up shape", ", ".join(f"{k}: {v:.0f}" for k, v in
                                                                 r["gemm_us_by_rows"].items()))
    c = r["compile"]
    if c is None:
        row("decode with torch.compile vs eager", "skipped")
    else:
        row("decode with torch.compile (compile=true) vs eager (tok/s)",
            f"{c['compiled_tok_s']:.1f} vs {c['eager_tok_s']:.1f} ({c['speedup']:.2f}x; load + compile "
            f"{c['compile_and_load_s']:.0f} s)", "pays if > 1.05x", "pays" if c["pays"] else "does not pay")
    fits = r["sequences_131k_that_fit"]
    lines += ["", f"131,072-token sequences that fit in a 1 GiB KV budget: {fits['bench_model_1GiB']} "
              f"(benchmark model), {fits['long_model_1GiB']} (long-context model).", ""]
    g = r["gemm_us_by_rows"]
    lines += [
        "## Notes", "",
        "- Speculative decoding: the benchmark model has random weights, so its output does not copy the code "
        "region the way a trained model's edit does; drafts come from the loops random models fall into. "
        f"A verification step runs k+1 rows through every Linear, and here 2 rows cost "
        f"{g['2'] / g['1']:.1f}x and 16 rows {g['16'] / g['1']:.1f}x one row (table above), so accepted drafts "
        "pay back less than on hardware where a step's cost is flat in the row count.",
        "- Threads: the engine defaults to the cores it is given (`num_threads = 0`); the first rows give "
        "decode at 1 and at that count, on the machine as the run found it and under CPU burner processes "
        "the command started (one per core). The kernels split their work over flint's own pool, where the "
        "caller never waits for a thread the OS has not run (README: Engine, `num_threads`).",
        "- Bounds: each precision's bound is the read bandwidth of a buffer the size of its weights with "
        "the same threads (these weights fit in a large L3, so the bound is a cache bandwidth); "
        "`bandwidth bound` above is the DRAM figure (512 MB reduction) for the fp32 weights.",
        "- Prefill: tokens/s falls with length because attention work grows with length squared; the "
        "engine never materialises a score matrix (CPU flash kernel over the cached keys and the chunk, "
        "merged by log-sum-exp), so memory stays linear in length.",
        "",
    ]
    missed = [(key, x) for key, x in b.items() if x.get("value") is not None and not x["met"]]
    if missed:
        lines += ["## Budgets missed, by how much, and what bounds them", ""]
        for key, x in missed:
            lines.append(f"- **{key}**: {x['value']:.3g} {x['unit']} vs budget {x['budget']} "
                         f"(missed by {x['missed_by']:.1f}x). Bound: {x['bound_by']}.")
        lines.append("")
    path.write_text("\n".join(lines))
