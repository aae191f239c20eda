"""Single-stream decode by thread count and by precision, flint beside llama.cpp, for `flint bench engine`.

- `threads_figure`: decode at 1 thread and at the engine default (the cores given), on the machine
  as it is and then under a CPU burner the command starts itself (one spinning process per core).
- `precision_figures`: flint fp32 / int8 / int4 (`EngineConfig.quantization`, when the engine has
  it) and llama.cpp f32 / q8_0 / q4_0 (when llama-cpp-python is installed), same checkpoint, same
  thread count, measured in interleaved rounds (every engine once per round, medians over rounds)
  so machine noise hits all alike; then weight bytes read per token, the read bandwidth of a buffer
  that size (the bound), aggregate tokens/s at 1 and 16 streams (medians of interleaved rounds) and a profile
  of a decode step.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from flint.bench import engine_llamacpp as lc
from flint.bench import engine_measure as m
from flint.engine.config import EngineConfig

log = logging.getLogger(__name__)

FLINT_PRECISIONS = ("fp32", "int8", "int4")
LLAMACPP_MATCH = {"fp32": "f32", "int8": "q8_0", "int4": "q4_0"}
_KV_BYTES = 1 << 28          # 256 MiB: 16 streams of a few hundred tokens need far less


def quantization_supported() -> bool:
    return "quantization" in {f.name for f in dataclasses.fields(EngineConfig)}


def threads_figure(path: Path, tokens: int, repeats: int, default: int, burn_s: float) -> dict:
    """{"one", "default"} tok/s on the machine as it is, and the same under `default` burner processes."""
    import os

    one = m.engine_for(path, num_threads=1, kv_cache_bytes=_KV_BYTES)
    dflt = m.engine_for(path, num_threads=default, kv_cache_bytes=_KV_BYTES)

    def both() -> dict:
        rates: dict[str, list[float]] = {"one": [], "default": []}
        for _ in range(repeats):
            for key, engine, n in (("one", one, 1), ("default", dflt, default)):
                m.torch.set_num_threads(n)
                rates[key].append(m.decode_tok_s(engine, tokens, 1))
        return {k: float(np.median(v)) for k, v in rates.items()}

    out = both() | {"default_count": default, "load_avg_1m": os.getloadavg()[0]}
    with m.CpuBurner(default, burn_s):
        loaded = both()
        loaded["load_avg_1m"] = os.getloadavg()[0]
    out["loaded"] = loaded | {"burner_processes": default}
    return out


def _flint_engines(path: Path, threads: int) -> tuple[dict, dict]:
    engines, notes = {}, {}
    for precision in FLINT_PRECISIONS:
        if precision == "fp32":
            engines[precision] = m.engine_for(path, num_threads=threads, kv_cache_bytes=_KV_BYTES)
        elif not quantization_supported():
            notes[precision] = "not available: this engine has no `quantization` setting"
        else:
            try:
                engines[precision] = m.engine_for(path, num_threads=threads, kv_cache_bytes=_KV_BYTES,
                                                  quantization=precision)
            except Exception as exc:  # noqa: BLE001 - a precision that fails to load is reported, not fatal
                log.exception("flint %s engine failed to load", precision)
                notes[precision] = f"not available: {type(exc).__name__}: {exc}"
    return engines, notes


def _llamacpp_decoders(path: Path, gguf_dir: Path, threads: int, context: int) -> tuple[dict, dict]:
    why = lc.available()
    if why is not None:
        return {}, {"available": False, "note": why}
    try:
        files = lc.make_ggufs(path, gguf_dir)
        decoders = {p: lc.LlamaCppDecoder(f, threads, context) for p, f in files.items()}
    except Exception as exc:  # noqa: BLE001 - conversion or load failure is reported, not fatal
        log.exception("llama.cpp setup failed")
        return {}, {"available": False, "note": f"llama.cpp setup failed: {type(exc).__name__}: {exc}"}
    return decoders, {"available": True, "file_bytes": lc.file_bytes(files), "threads": threads,
                      "files": {p: str(f) for p, f in files.items()}}


def precision_figures(path: Path, gguf_dir: Path, *, threads: int, tokens: int, rounds: int, agg_tokens: int,
                      profile_steps: int) -> dict:
    engines, flint_notes = _flint_engines(path, threads)
    m.torch.set_num_threads(threads)
    prompt = m.prompt_ids(engines["fp32"], 16)
    decoders, llamacpp = _llamacpp_decoders(path, gguf_dir, threads, context=len(prompt) + tokens + 16)
    rates: dict[str, list[float]] = {k: [] for k in [*engines, *(f"llamacpp_{p}" for p in decoders)]}
    llama_tokens: list[int] = []
    try:
        for _ in range(rounds):
            for precision, engine in engines.items():
                rates[precision].append(m.decode_tok_s(engine, tokens, 1))
            for p, dec in decoders.items():
                rate, out = dec.decode(prompt, tokens)
                rates[f"llamacpp_{p}"].append(rate)
                if p == "f32":
                    llama_tokens = out
    finally:
        for dec in decoders.values():
            dec.close()
    med = {k: float(np.median(v)) for k, v in rates.items()}
    if decoders:
        llamacpp["f32_leading_tokens_equal_to_flint_fp32"] = _leading_equal(engines["fp32"], prompt, llama_tokens)
    per: dict[str, dict] = {}
    peaks = m.instruction_peaks()
    for precision, engine in engines.items():
        info = m.model_info(engine)
        read = info["weight_bytes_read_per_token"]
        bw = m.read_bandwidth_gbs(read, threads)
        agg, agg_rounds = m.aggregate_rates(engine, (1, 16), agg_tokens, rounds)
        linear_us = m.linear_pass_us(engine)
        per[precision] = {
            "decode_tok_s": med[precision], "weight_bytes": info["bytes"], "weight_bytes_read_per_token": read,
            "read_bandwidth_gb_s_at_weight_size": bw, "bound_tok_s": bw * 1e9 / read,
            "pct_of_bound": 100 * med[precision] * read / (bw * 1e9),
            "aggregate_tok_s": agg, "aggregate_rounds": agg_rounds, "aggregate_16_vs_1": agg["16"] / agg["1"],
            "linear_pass_us": linear_us,
            "linear_16_rows": _against_peak(precision, 16 * m.linear_macs(engine), linear_us["16"], peaks),
            "step_profile": m.step_profile(engine, profile_steps),
            # a decode step of 1 and of 16 streams, its model part (forward + logits) and host part, medians
            "decode_step_ms": {str(n): m.host_overhead_ms(engine, 48, streams=n) for n in (1, 16)},
        }
    for precision, note in flint_notes.items():
        per[precision] = {"decode_tok_s": None, "note": note}
    decode = {"flint_int8": None, "flint_int4": None} | {
        ("flint" if k == "fp32" else f"flint_{k}"): v for k, v in med.items() if not k.startswith("llamacpp")}
    decode |= {f"llamacpp_{p}": med.get(f"llamacpp_{p}") for p in lc.PRECISIONS}
    return {"decode_tok_s": decode, "rounds": rates, "precisions": per, "llamacpp": llamacpp}


def _against_peak(precision: str, macs: int, us: float, peaks: dict) -> dict:
    """A 16-row Linear pass as instructions per second of its kernel's multiply-add instruction, and that rate
    as a share of the machine's peak for the instruction (16 fp32 multiply-adds per 512-bit FMA, 8 per 256-bit
    one, 64 int8 ones per 512-bit vpdpbusd)."""
    if precision == "fp32":
        key = "fma512_per_s" if "fma512_per_s" in peaks else "fma256_per_s"
        width = 16 if key == "fma512_per_s" else 8
    else:
        key, width = "vpdpbusd512_per_s", 64
    rate = macs / width / (us * 1e-6)
    peak = peaks.get(key)
    return {"instruction": key.removesuffix("_per_s"), "instructions": macs // width, "per_s": rate,
            "machine_peak_per_s": peak, "pct_of_peak": 100 * rate / peak if peak else None}


def _leading_equal(engine, prompt: list[int], llama_tokens: list[int]) -> int:
    """How many of llama.cpp's first greedy tokens flint fp32 reproduces: a check that both run one model."""
    engine.recorded_outputs = {}
    m.token_request(engine, "agree", prompt, len(llama_tokens) or 1)
    m.run_all(engine)
    flint_tokens = engine.recorded_outputs.pop("agree")
    engine.recorded_outputs = None
    n = 0
    for a, b in zip(flint_tokens, llama_tokens):
        if a != b:
            break
        n += 1
    return n
