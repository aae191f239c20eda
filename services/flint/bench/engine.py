"""`flint bench engine`: the engine's figures side by side in one process run.

    flint bench engine            # full run, writes loadtests/results/engine.json + engine.md
    flint bench engine --quick    # smoke test with tiny sizes (seconds)

Models are made by the command (random weights, demo format, fp32):
- `bench`: a few tens of millions of parameters, for decode, HF comparison,
  concurrency, keystroke TTFT and speculative decoding;
- `micro`: so small that compute is negligible, for host overhead per step;
- `long`: small enough that a 131,072-token prefill finishes in about a
  minute on 2 cores (attention FLOPs grow with length squared).
"""

from __future__ import annotations

import argparse
import json
import os
import logging
import time
from pathlib import Path

import torch

from flint.bench import engine_measure as m
from flint.bench import engine_precision as pr
from flint.bench.engine_report import budgets, write_markdown
from flint.engine.config import EngineConfig

FULL = dict(
    # issue 11's model: Llama, tied embeddings, 20.8M parameters
    bench=dict(layers=4, hidden=512, heads=8, kv_heads=4, intermediate=1536, vocab_size=16_000,
               max_position_embeddings=16_384, architecture="llama"),
    micro=dict(layers=1, hidden=32, heads=2, kv_heads=1, intermediate=64, vocab_size=512,
               max_position_embeddings=4096),
    long=dict(layers=2, hidden=128, heads=2, kv_heads=1, intermediate=256, vocab_size=512,
              max_position_embeddings=135_168),
    decode_tokens=256, repeats=3, hf_tokens=64, overhead_steps=200, agg_tokens=64,
    keystroke_context=8192, keystroke_new=16, prefill=(8192, 32_768, 131_072), spec_tokens=128,
    spec_region=384, bandwidth_mb=512, bandwidth_repeats=7, burn_s=600, profile_steps=32,
    thread_tokens=128, thread_repeats=2,
)
QUICK = dict(
    FULL,
    bench=dict(layers=2, hidden=128, heads=4, kv_heads=2, intermediate=256, vocab_size=512,
               max_position_embeddings=4096, architecture="llama"),
    long=dict(FULL["long"], max_position_embeddings=4096),
    decode_tokens=16, repeats=1, hf_tokens=8, overhead_steps=20, agg_tokens=8, keystroke_context=512,
    prefill=(512, 1024, 2048), spec_tokens=32, spec_region=96, bandwidth_mb=64, bandwidth_repeats=3,
    burn_s=120, profile_steps=4, thread_tokens=16, thread_repeats=1,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="flint bench engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not figures to quote")
    p.add_argument("--out-dir", default="loadtests/results", help="where engine.json and engine.md go")
    p.add_argument("--models-dir", default="", help="where the made checkpoints go (default: flint cache dir)")
    p.add_argument("--skip-hf", action="store_true", help="leave out the transformers baseline")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile comparison")
    p.add_argument("--threads", type=int, default=0,
                   help="torch (and llama.cpp) threads for the figures; 0 = the engine default (the cores given)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = run(QUICK if args.quick else FULL, models_dir=args.models_dir, skip_hf=args.skip_hf,
                  skip_compile=args.skip_compile, quick=args.quick, threads=args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "engine.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(out / "engine.md", results)
    print(f"wrote {out / 'engine.json'} and {out / 'engine.md'}")
    return 0


def _log(msg: str) -> None:
    print(f"[bench engine {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(s: dict, *, models_dir: str = "", skip_hf: bool = False, skip_compile: bool = False,
        quick: bool = False, threads: int = 0) -> dict:
    from flint import env

    root = Path(models_dir) if models_dir else env.cache_dir() / "bench-models"
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    _log("making models")
    bench = m.make_model(root, "bench", None, **s["bench"])
    micro = m.make_model(root, "micro", bench, **s["micro"])
    long = m.make_model(root, "long", bench, **s["long"])
    r: dict = {"quick": quick, "machine": m.machine()}

    _log("bandwidth")
    bw = m.bandwidth_gbs(s["bandwidth_mb"], s["bandwidth_repeats"])
    r["bandwidth_gb_s"] = bw

    default_threads = EngineConfig().threads()
    threads = threads or default_threads
    _log(f"single-stream decode at 1 and {default_threads} (default) threads, then under a CPU burner")
    r["threads"] = pr.threads_figure(bench, s["thread_tokens"], s["thread_repeats"], default_threads,
                                     burn_s=s["burn_s"])
    r["engine_threads"] = threads
    torch.set_num_threads(threads)

    _log(f"decode by precision, flint and llama.cpp, {threads} thread(s), interleaved rounds")
    prec = pr.precision_figures(bench, root / "gguf", threads=threads, tokens=s["decode_tokens"],
                                rounds=s["repeats"], agg_tokens=s["agg_tokens"], profile_steps=s["profile_steps"])
    r["precisions"], r["llamacpp"], r["decode_rounds"] = prec["precisions"], prec["llamacpp"], prec["rounds"]
    engine = m.engine_for(bench, num_threads=threads)
    r["model"] = m.model_info(engine)
    r["model"]["checkpoint"] = "made by `flint bench engine` (random weights, Llama, tied embeddings)"
    read = r["model"]["weight_bytes_read_per_token"]
    r["bandwidth_bound_tok_s"] = bw * 1e9 / read
    r["decode_tok_s"] = prec["decode_tok_s"]
    r["decode_tok_s"]["flint_by_threads"] = {"1": r["threads"]["one"], str(default_threads): r["threads"]["default"]}
    if not skip_hf:
        hf_missing = m.hf_unavailable()
        if hf_missing:
            r["hf_note"] = hf_missing
        else:
            _log("flint vs transformers generate(), interleaved")
            both = m.flint_vs_hf(engine, bench, s["decode_tokens"], s["hf_tokens"], s["repeats"] + 2)
            r["decode_tok_s"].update(hf=both["hf"], flint_hf_rounds=both["flint_rounds"], hf_rounds=both["hf_rounds"])
            r["decode_tok_s"]["flint_next_to_hf"] = both["flint"]
    r["decode_pct_of_bound"] = 100 * r["decode_tok_s"]["flint"] / r["bandwidth_bound_tok_s"]

    _log("host overhead per step (micro model)")
    micro_engine = m.engine_for(micro, num_threads=threads)
    overhead = m.host_overhead_ms(micro_engine, s["overhead_steps"])
    r["host_overhead_ms_per_step"] = overhead["host_ms"]
    r["micro_step"] = overhead | {"model": m.model_info(micro_engine)}
    bench_overhead = m.host_overhead_ms(engine, min(64, s["overhead_steps"]))
    r["bench_step"] = bench_overhead

    mi = r["model"]
    r["gemm_us_by_rows"] = m.skinny_gemm_us(mi["hidden"], 2 * mi["intermediate"])

    _log("aggregate tokens/s at 1, 4, 16 streams, interleaved rounds")
    r["aggregate_tok_s"], r["aggregate_rounds"] = m.aggregate_rates(engine, (1, 4, 16), s["agg_tokens"],
                                                                     s["repeats"])

    _log("keystroke TTFT")
    nocache = m.engine_for(bench, num_threads=threads, prefix_cache=False)
    r["keystroke_ttft_ms"] = m.keystroke(engine, nocache, s["keystroke_context"], s["keystroke_new"],
                                         s["repeats"])
    r["keystroke_context_tokens"] = s["keystroke_context"]
    del nocache

    _log("prefill tokens/s (long-context model)")
    long_engine = m.engine_for(long, num_threads=torch.get_num_threads(), kv_cache_bytes=1 << 30)
    r["long_model"] = m.model_info(long_engine)
    r["prefill_tok_s"] = {}
    for n in s["prefill"]:
        _log(f"  prefill {n}")
        r["prefill_tok_s"][str(n)] = m.prefill_tok_s(long_engine, n)
    r["sequences_131k_that_fit"] = {"long_model_1GiB": long_engine.sequences_131k,
                                    "bench_model_1GiB": engine.sequences_131k}
    del long_engine

    _log("speculative decoding on an edit-shaped prompt")
    r["spec_decode"] = m.spec_decode(bench, s["spec_tokens"], s["spec_region"], num_threads=threads)

    r["compile"] = None
    if not skip_compile:
        _log("torch.compile decode vs eager")
        r["compile"] = m.compile_ab(bench, s["decode_tokens"], s["repeats"] + 2, threads)

    r["budgets"] = budgets(r)
    r["elapsed_s"] = time.perf_counter() - started
    r["machine"]["load_avg_1m_at_end"] = os.getloadavg()[0]
    _log(f"done in {r['elapsed_s']:.0f} s")
    return r
