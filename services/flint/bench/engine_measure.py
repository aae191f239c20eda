"""The measurements of `flint bench engine`, one function per figure.

Requests are built straight from token ids (no template) with end tokens
cleared, so every run generates exactly the tokens asked for and the
figures compare like with like.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.request import Request


# -- machine and models ---------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads_default": torch.get_num_threads(), "load_avg_1m_at_start": os.getloadavg()[0]}


def make_model(root: Path, name: str, tokenizer_from: Path | None, **dims) -> Path:
    """A random demo-format checkpoint made by this command (reused if the same dims exist)."""
    from flint.engine.demo import make_checkpoint

    path = root / (name + "-" + "-".join(f"{k}{v}" for k, v in sorted(dims.items())))
    if not (path / "model.safetensors").is_file():
        make_checkpoint(path, tokenizer_from=tokenizer_from, corpus_bytes=1_000_000, **dims)
    return path


def weight_bytes(model) -> tuple[int, int]:
    """(bytes of all weights, bytes one decode step reads).

    Read per step: every Linear's weight once, quantized or not, tied ones once
    (`flint.engine.quant.weight_bytes`); the embedding table only through the tied lm_head.
    All: the unique tensors of the state dict (a packed matrix without its last panel's zero padding) plus the
    quantized matrices (held outside it).
    """
    from flint.engine.model.packed import PackedLinear
    from flint.engine.quant import weight_bytes as read_per_step

    unpadded = {m.packed.data_ptr(): m.in_features * m.out_features * m.packed.element_size()
                for m in model.modules() if isinstance(m, PackedLinear)}
    seen: set[int] = set()
    total = 0
    for t in model.state_dict(keep_vars=True).values():   # (views into one mapping: flint.engine.hugepages)
        if t.device.type != "meta" and t.numel() and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += unpadded.get(t.data_ptr(), t.numel() * t.element_size())
    quantized = {id(m.qweight): m.qweight for m in model.modules() if hasattr(m, "qweight")}
    total += sum(w.nbytes for w in quantized.values())
    return total, read_per_step(model)


def param_count(model) -> int:
    """Parameters of the model: its nn.Parameters and its packed matrices' elements (padding not counted), tied
    tensors once."""
    from flint.engine.model.packed import PackedLinear

    seen: set[int] = set()
    n = 0
    for mod in model.modules():
        tensors = list(mod.parameters(recurse=False))
        if isinstance(mod, PackedLinear):
            if id(mod.packed) not in seen:
                seen.add(id(mod.packed))
                n += mod.in_features * mod.out_features
            tensors += [] if mod.bias is None else [mod.bias]
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                n += t.numel()
    return n


def model_info(engine: Engine) -> dict:
    model = engine.runner.model
    params = param_count(model)
    bytes_, read = weight_bytes(model)
    c = model.config
    return {"params": params, "bytes": bytes_, "weight_bytes_read_per_token": read, "layers": c.num_layers,
            "hidden": c.hidden_size, "heads": c.num_heads, "kv_heads": c.num_kv_heads,
            "intermediate": c.intermediate_size, "vocab": c.vocab_size, "dtype": str(model.dtype).replace("torch.", "")}


def engine_for(path: Path, **overrides) -> Engine:
    config = dict(model=str(path), kv_cache_bytes=1 << 30, speculation="off")
    config.update(overrides)
    return Engine.from_config(EngineConfig.from_dict(config))


def token_request(engine: Engine, rid: str, ids, max_tokens: int, *, speculate: bool = False,
                  namespace: str = "") -> Request:
    return engine.add_tokens(rid, ids, max_tokens, speculate=speculate, namespace=namespace)


def prompt_ids(engine: Engine, n: int, seed: int = 0) -> list[int]:
    """n token ids of real code text (the tokenizer's own output), cycled to length."""
    text = Path(os.__file__).read_text(encoding="utf-8")
    ids = engine.tokenizer.encode(text)
    rng = np.random.default_rng(seed)
    start = int(rng.integers(0, max(1, len(ids) - 1)))
    out = (ids[start:] + ids) * (n // max(1, len(ids)) + 2)
    return out[:n]


def run_all(engine: Engine) -> None:
    while engine.has_work():
        engine.step()


# -- figures --------------------------------------------------------------------------------------
def bandwidth_gbs(size_mb: int, repeats: int) -> float:
    """Read bandwidth of a large reduction on all cores, best of `repeats` (these machines are noisy)."""
    return read_bandwidth_gbs(size_mb * (1 << 20), os.cpu_count() or 1, repeats)


def read_bandwidth_gbs(nbytes: int, threads: int, repeats: int = 20) -> float:
    """Read bandwidth summing a buffer of `nbytes` with `threads` threads, best of `repeats`. With a
    buffer the size of a model's weights (cache-resident if they fit), the bound for reading them per token."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    torch.set_num_threads(before)
    return x.numel() * 4 / best / 1e9


def step_profile(engine: Engine, steps: int, top: int = 5) -> list[dict]:
    """torch.profiler over `steps` batch-1 decode steps: the ops with the most self CPU time, as % of the
    steps' wall time. Work the profiler does not see as an aten op (flint's native Linear kernel, Python,
    waiting to be scheduled) is the entry "not an aten op"."""
    from torch.profiler import ProfilerActivity, profile

    token_request(engine, "profile", prompt_ids(engine, 16), steps + 4)
    for _ in range(3):
        engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            engine.step()
        wall_us = (time.perf_counter() - t) * 1e6
    run_all(engine)
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    out = [{"op": e.key, "pct": 100 * e.self_cpu_time_total / wall_us, "calls_per_step": e.count / steps}
           for e in ranked]
    aten = sum(e.self_cpu_time_total for e in events)
    out.append({"op": "not an aten op (native Linear kernel, Python)", "pct": max(0.0, 100 * (1 - aten / wall_us)), "calls_per_step": None})
    return sorted(out, key=lambda x: x["pct"], reverse=True)


class CpuBurner:
    """`n` processes spinning on the CPU for at most `seconds` (bounded even if the benchmark dies)."""

    def __init__(self, n: int, seconds: float):
        import subprocess
        import sys

        code = f"import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]

    def __enter__(self) -> "CpuBurner":
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait()


def decode_tok_s(engine: Engine, tokens: int, repeats: int, prompt: int = 16) -> float:
    """Single-stream greedy decode rate (first token to last), median of repeats."""
    rates = []
    for i in range(repeats):
        req = token_request(engine, f"decode-{i}", prompt_ids(engine, prompt, seed=i), tokens)
        run_all(engine)
        rates.append((req.num_output - 1) / (req.last_token_at - req.first_token_at))
    return float(np.median(rates))


def hf_unavailable() -> str | None:
    """None if transformers imports (the `test` extra), else a note saying the HF column is skipped."""
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        return f"transformers not installed ({exc}): HF generate() column skipped; pip install -e '.[test]' adds it"
    return None


class HFBaseline:
    """transformers `generate()` greedy on the same checkpoint; rate = N tokens / (time(N+1) - time(1))."""

    def __init__(self, path: Path, prompt_ids_: list[int]):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        self.ids = torch.tensor([prompt_ids_])
        self._timed(2)

    def _timed(self, n: int) -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(self.ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        return time.perf_counter() - t

    def decode_tok_s(self, tokens: int) -> float:
        return tokens / (self._timed(tokens + 1) - self._timed(1))


def flint_vs_hf(engine: Engine, path: Path, tokens: int, hf_tokens: int, rounds: int) -> dict:
    """Interleaved rounds (flint, HF, flint, HF...) so machine noise hits both alike; medians."""
    hf = HFBaseline(path, prompt_ids(engine, 16))
    flint_rates, hf_rates = [], []
    for _ in range(rounds):
        flint_rates.append(decode_tok_s(engine, tokens, 1))
        hf_rates.append(hf.decode_tok_s(hf_tokens))
    return {"flint": float(np.median(flint_rates)), "hf": float(np.median(hf_rates)),
            "flint_rounds": flint_rates, "hf_rounds": hf_rates}


def skinny_gemm_us(d_in: int, d_out: int, rows=(1, 2, 4, 16), repeats: int = 50) -> dict:
    """Time of one fp32 Linear [rows, d_in] x [d_out, d_in]^T on the engine's own kernel (as a decode step
    calls it: `PackedLinear` where the kernel builds): how batching / draft verification scales here. Best of
    `repeats` (a busy machine adds noise)."""
    from flint.engine.model.linear import Linear, native_available
    from flint.engine.model.packed import PackedLinear

    if native_available():
        layer = PackedLinear(torch.randn(d_out, d_in))
    else:
        layer = Linear(d_in, d_out, bias=False).requires_grad_(False)
        with torch.no_grad():
            layer.weight.copy_(torch.randn(d_out, d_in))
    out = {}
    for m_rows in rows:
        x = torch.randn(m_rows, d_in)
        out[str(m_rows)] = _best_us(lambda: layer(x), repeats)
    return out


def _best_us(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e6


def linear_pass_us(engine: Engine, rows=(1, 16), repeats: int = 20) -> dict:
    """One pass of `rows` rows through every Linear of the engine's model (lm_head included), on the kernels a
    decode step calls, best of `repeats`: what a step over that many streams cannot go below."""
    linears = _linears(engine)
    out = {}
    with torch.inference_mode():
        for m_rows in rows:
            xs = [torch.randn(m_rows, mod.in_features) for mod in linears]
            out[str(m_rows)] = _best_us(lambda: [mod(x) for mod, x in zip(linears, xs)], repeats)
    return out


def instruction_peaks() -> dict:
    """Per second over the intra-op threads: the fp32 kernel's FMA (512-bit with AVX-512, else 256-bit; key
    `fma512_per_s` or `fma256_per_s`) and the VNNI kernel's 512-bit vpdpbusd, 12 independent ones in a loop: what
    a Linear pass on them cannot beat. 0 where the CPU or build lacks the instruction; None where the kernels
    did not build."""
    from flint.engine import kernels

    out = {}
    try:
        f32 = kernels.load("skinny_f32")
        out[f"fma{32 * max(8, f32.fma_width())}_per_s"] = max(f32.fma_peak_per_s(20_000_000) for _ in range(3))
    except kernels.KernelUnavailable:
        out["fma256_per_s"] = None
    try:
        out["vpdpbusd512_per_s"] = max(kernels.load("flint_quant_linear").vnni_peak_per_s(20_000_000)
                                       for _ in range(3))
    except (kernels.KernelUnavailable, AttributeError):
        out["vpdpbusd512_per_s"] = None
    return out


def _linears(engine: Engine) -> list:
    """Every Linear of the engine's model, fp32 or quantized, lm_head included."""
    return [mod for mod in engine.runner.model.modules() if hasattr(mod, "in_features")
            and hasattr(mod, "out_features") and not isinstance(mod, torch.nn.Embedding)]


def linear_macs(engine: Engine) -> int:
    """Multiply-adds of one row through every Linear of the engine's model (lm_head included)."""
    return sum(mod.in_features * mod.out_features for mod in _linears(engine))


def host_overhead_ms(engine: Engine, steps: int, streams: int = 1) -> dict:
    """Per-step time of `streams` decoding streams (batch 1 by default) outside the model's forward pass and
    logits projection.

    Host work = everything else in `Engine.step`: scheduling, building the step's index tensors
    (`PagedAttention.begin_step`), sampling's host transfer, detokenizing, events, metrics.
    Measured per step (step time minus that step's model time), then the median.
    """
    runner = engine.runner
    model_s = [0.0]
    execute, begin = runner.execute, runner.attn.begin_step

    def timed_execute(batch):
        t = time.perf_counter()
        out = execute(batch)
        model_s[0] += time.perf_counter() - t
        return out

    def timed_begin(seqs):
        t = time.perf_counter()
        out = begin(seqs)
        model_s[0] -= time.perf_counter() - t        # index building is host work
        return out

    runner.execute, runner.attn.begin_step = timed_execute, timed_begin
    try:
        for i in range(streams):
            token_request(engine, f"overhead-{streams}-{i}", prompt_ids(engine, 16, seed=i), steps + 8)
        for _ in range(8):                            # warm-up: prefill and first decode steps
            engine.step()
        host, step, model = [], [], []
        while engine.has_work():
            model_s[0] = 0.0
            t = time.perf_counter()
            engine.step()
            dt = time.perf_counter() - t
            host.append(dt - model_s[0])
            step.append(dt)
            model.append(model_s[0])
    finally:
        runner.execute, runner.attn.begin_step = execute, begin
    return {"host_ms": float(np.median(host)) * 1e3, "step_ms": float(np.median(step)) * 1e3,
            "forward_ms": float(np.median(model)) * 1e3}


def aggregate_rates(engine: Engine, counts, tokens: int, rounds: int) -> tuple[dict, dict]:
    """aggregate_tok_s at each stream count in `counts`, in `rounds` interleaved rounds (every count once per
    round, so machine noise hits all alike): ({count: median}, {count: every round's rate})."""
    runs: dict[str, list[float]] = {str(n): [] for n in counts}
    for _ in range(rounds):
        for n in counts:
            runs[str(n)].append(aggregate_tok_s(engine, n, tokens))
    return {n: float(np.median(v)) for n, v in runs.items()}, runs


def aggregate_tok_s(engine: Engine, streams: int, tokens: int) -> float:
    reqs = [token_request(engine, f"agg{streams}-{i}", prompt_ids(engine, 16, seed=i), tokens)
            for i in range(streams)]
    t = time.perf_counter()
    run_all(engine)
    elapsed = time.perf_counter() - t
    return sum(r.num_output for r in reqs) / elapsed


def ttft_ms(engine: Engine, rid: str, ids: list[int], namespace: str = "") -> float:
    req = token_request(engine, rid, ids, 1, namespace=namespace)
    run_all(engine)
    return (req.first_token_at - req.arrival_mono) * 1e3


def keystroke(engine_cached: Engine, engine_nocache: Engine, context: int, new: int, repeats: int) -> dict:
    base = prompt_ids(engine_cached, context + new * (repeats + 1), seed=3)
    no_ctx = [ttft_ms(engine_cached, f"short-{i}", prompt_ids(engine_cached, new, seed=10 + i), f"nc{i}")
              for i in range(repeats)]
    ttft_ms(engine_cached, "warm", base[:context])                       # the cached 8K context
    cached, uncached, hits = [], [], []
    for i in range(repeats):
        ids = base[: context + new * (i + 1)]                             # each keystroke extends the prompt
        cached.append(ttft_ms(engine_cached, f"key-{i}", ids))
        uncached.append(ttft_ms(engine_nocache, f"key-{i}", ids))
    return {"cached": float(np.median(cached)), "no_context": float(np.median(no_ctx)),
            "no_prefix_cache": float(np.median(uncached))}


def prefill_tok_s(engine: Engine, n: int) -> float:
    req = token_request(engine, f"prefill-{n}", prompt_ids(engine, n, seed=5), 1)
    run_all(engine)
    return n / (req.first_token_at - req.scheduled_at)


def spec_decode(path: Path, tokens: int, region_tokens: int, **engine_kw) -> dict:
    """An edit-shaped prompt (code region, then the start of its rewrite), greedy, with and without drafts."""
    out = {}
    for mode in ("off", "edit"):
        engine = engine_for(path, speculation=mode, **engine_kw)
        region = prompt_ids(engine, region_tokens, seed=7)
        ids = region + region[:8]                 # the rewrite has started copying the region
        engine.recorded_outputs = {}
        req = token_request(engine, "edit", ids, tokens, speculate=mode == "edit")
        steps = 0
        while engine.has_work():
            engine.step()
            steps += 1
        out[mode] = {"tok_s": (req.num_output - 1) / (req.last_token_at - req.first_token_at),
                     "tokens": engine.recorded_outputs["edit"], "steps": steps - 1,
                     "draft": req.draft_tokens, "accepted": req.accepted_draft_tokens}
    spec, plain = out["edit"], out["off"]
    return {
        "accepted_per_step": spec["accepted"] / max(1, spec["steps"]),
        "tokens_per_step": (len(spec["tokens"]) - 1) / max(1, spec["steps"]),
        "draft_tokens": spec["draft"], "accepted_draft_tokens": spec["accepted"],
        "acceptance_rate": spec["accepted"] / max(1, spec["draft"]),
        "speedup": spec["tok_s"] / plain["tok_s"],
        "spec_tok_s": spec["tok_s"], "plain_tok_s": plain["tok_s"],
        "outputs_match": spec["tokens"] == plain["tokens"], "tokens": len(plain["tokens"]),
    }


def compile_ab(path: Path, tokens: int, rounds: int, threads: int) -> dict:
    """Eager vs `compile=true` decode, interleaved round by round so machine noise hits both alike."""
    eager = engine_for(path, num_threads=threads)
    t = time.perf_counter()
    compiled = engine_for(path, num_threads=threads, compile=True)
    compile_s = time.perf_counter() - t
    eager_rates, compiled_rates = [], []
    for _ in range(rounds):
        eager_rates.append(decode_tok_s(eager, tokens, 1))
        compiled_rates.append(decode_tok_s(compiled, tokens, 1))
    e, c = float(np.median(eager_rates)), float(np.median(compiled_rates))
    decode = compiled.runner.compiled_decode        # None if compiling failed (the engine then runs eager)
    return {"eager_tok_s": e, "compiled_tok_s": c, "compile_and_load_s": compile_s, "speedup": c / e,
            "pays": c > 1.05 * e, "compiled": decode is not None,
            "compile_s_by_bucket": {str(b): s for b, s in decode.compile_s.items()} if decode else {}}
