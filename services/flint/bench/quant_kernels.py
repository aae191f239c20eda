"""Micro-benchmark of the quantized Linear kernels: GB/s of weight bytes per GEMV / small-M GEMM.

    python -m flint.bench.quant_kernels [--threads N] [--rows 1,4,8,16] [--repeat 30]

One "pass" multiplies x [M, K] through every weight matrix of the issue-#11 benchmark model (Llama,
4 layers, d=512, 8/4 heads, MLP 1536, vocab 16,000: per layer qkv 1024x512, o 512x512, gate_up 3072x512,
down 512x1536, plus the 16,000x512 lm_head), each matrix a different tensor, as a decode step reads
them. Reported per precision: ms per pass, weight GB/s, and the same for plain fp32 `F.linear`; as the
bandwidth reference, GB/s of `torch.sum` over a 256 MiB tensor (DRAM) and over a tensor of the int4
model's size (cache resident), in the same run. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from flint.engine.quant.formats import quantize_int4, quantize_int8
from flint.engine.quant.modules import QuantLinear, kernel

D, INTER, VOCAB, LAYERS, HEADS, KV_HEADS = 512, 1536, 16_000, 4, 8, 4


def model_shapes() -> list[tuple[int, int]]:
    hd = D // HEADS
    layer = [((HEADS + 2 * KV_HEADS) * hd, D), (D, D), (2 * INTER, D), (D, INTER)]
    return layer * LAYERS + [(VOCAB, D)]


CLOCK = time.perf_counter


def best_ms(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    times.sort()
    return 1e3 * times[len(times) // 4]   # lower quartile: the machine is shared, take the less disturbed runs


def sum_gbs(numel: int, repeat: int) -> float:
    t = torch.ones(numel)
    return t.numel() * 4 / best_ms(lambda: t.sum(), repeat) / 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rows", default="1,4,8,16")
    p.add_argument("--repeat", type=int, default=30)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: this thread's CPU time (with --threads 1 the kernels run on it), which a busy "
                   "machine disturbs less than wall time")
    args = p.parse_args(argv)
    global CLOCK
    if args.clock == "cpu":
        if args.threads != 1:
            p.error("--clock cpu needs --threads 1 (other threads' CPU time is not counted)")
        CLOCK = time.thread_time
    torch.set_num_threads(args.threads)
    k = kernel()
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, kk, generator=g) * 0.05 for n, kk in model_shapes()]
    variants: dict[str, list] = {"fp32 F.linear": weights}
    variants["int8"] = [QuantLinear(quantize_int8(w)) for w in weights]
    for gs in (32, 64, 128):
        variants[f"int4 g{gs}"] = [QuantLinear(quantize_int4(w, gs)) for w in weights]
    nbytes = {"fp32 F.linear": sum(w.numel() * 4 for w in weights)}
    for name, mods in variants.items():
        if name != "fp32 F.linear":
            nbytes[name] = sum(m.qweight.nbytes for m in mods)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, kernel isa "
          f"{getattr(k, 'isa', 'unavailable (PyTorch fallback)')}, threads {args.threads}, "
          f"load avg {os.getloadavg()[0]:.1f} at start, torch {torch.__version__}, clock {args.clock}")
    dram = sum_gbs(64 << 20, args.repeat)
    cached = sum_gbs(nbytes["int4 g64"] // 4, args.repeat * 4)
    print(f"bandwidth reference (torch.sum): {dram:.1f} GB/s over 256 MiB, {cached:.1f} GB/s over "
          f"{nbytes['int4 g64'] / 2**20:.1f} MiB (int4 model size)\n")
    rows = [int(r) for r in args.rows.split(",")]
    print("| weights | kernel | MiB | " + " | ".join(f"M={m} ms | M={m} GB/s" for m in rows) + " |")
    print("|---|---|---|" + "---|---|" * len(rows))
    tiled = f"tiled-{k.tiled_isa}" if getattr(k, "has_tiled", False) else ""
    paths = [(tiled, True), ("fp32-dequant", False)] if tiled else [("fp32-dequant", False)]
    for (name, mods), (path, on) in ((v, p) for v in variants.items() for p in paths):
        if name == "fp32 F.linear" and not on and len(paths) > 1:
            continue
        if k is not None:
            k.use_tiled(on)
        path = "torch" if name == "fp32 F.linear" else path
        cells = []
        for m in rows:
            x = torch.randn(m, D, generator=g)
            xi = torch.randn(m, INTER, generator=g)
            if name == "fp32 F.linear":
                def run(ws=mods, x=x, xi=xi):
                    for w in ws:
                        F.linear(xi if w.shape[1] == INTER else x, w)
            else:
                def run(ms=mods, x=x, xi=xi):
                    for mod in ms:
                        mod(xi if mod.in_features == INTER else x)
            ms = best_ms(run, args.repeat)
            cells.append(f"{ms:.3f} | {nbytes[name] / ms / 1e6:.1f}")
        print(f"| {name} | {path} | {nbytes[name] / 2**20:.1f} | " + " | ".join(cells) + " |")
    if k is not None:
        k.use_tiled(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
