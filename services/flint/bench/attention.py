"""Attention cost of a keystroke at long cached contexts vs the KV read bound.

    python -m flint.bench.attention [--contexts 8192,32768,131072] [--new 1,3,16] [--out FILE.md]

Runs `PagedAttention` alone (all layers of one step) on the demo model's shape
(engine/demo.py: 4 layers, 4 query heads, 2 KV heads, head_dim 64, float32)
over a sequence whose `context` tokens are cached in blocks laid out as the
block allocator hands them to a fresh sequence, bringing `new` tokens (1 =
decode, a few = a keystroke's re-prefilled tokens). Two paths are timed in
the same run, interleaved: the native kernel that reads the KV in place, and
the PyTorch fallback that gathers the sequence's keys and values first (what
every step ran before).

The bound: one read of the sequence's K and V (context x layers x KV heads x
head_dim x 2 x bytes) at the read bandwidth measured in the same run, between
the timed steps, as the best of a float32 sum over a 512 MiB tensor with the
same thread count. "x bound" near 1 means the step costs about one read of
its KV.

The machine this runs on is shared (load average 8-16 on 2 cores while it was
measured), so wall time mostly measures the scheduler. With one thread the
figures are the calling thread's CPU time (`time.thread_time`: the kernel
runs on that thread; the sum for the bandwidth too): what the step costs when
it has a core, the same clock for the step and its bound. Wall-clock medians
are printed beside them. Each figure is the median (bandwidth: the best) of
interleaved repetitions.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

DEMO_SHAPE = dict(layers=4, heads=4, kv_heads=2, head_dim=64, dtype=torch.float32)
BANDWIDTH_ELEMS = 1 << 27     # 512 MiB of float32: well past the last-level cache


def kv_bytes_read(context: int, *, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, **_) -> int:
    """Bytes of K and V one step reads for a sequence of `context` tokens."""
    return 2 * context * layers * kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


class ReadBandwidth:
    """Sequential read bandwidth of this machine right now: a float32 sum over a tensor past the caches."""

    def __init__(self, elems: int):
        self.data = torch.ones(elems, dtype=torch.float32)

    def sample_gbps(self) -> float:
        """GB/s of one sum, timed by this thread's CPU time (see the module docstring)."""
        t = time.thread_time()
        self.data.sum()
        return self.data.numel() * 4 / (time.thread_time() - t) / 1e9


def _slots(context: int, block_size: int) -> torch.Tensor:
    """Slot map of a fresh sequence of `context` tokens, blocks in the allocator's order."""
    from flint.engine.block_allocator import BlockAllocator

    blocks = -(-context // block_size)
    order = torch.from_numpy(BlockAllocator(blocks, block_size).allocate(blocks))
    return (order[:, None] * block_size + torch.arange(block_size)).flatten()[:context]


def _step_ms(attn, slots: torch.Tensor, start: int, n: int, qkv, layers: int) -> tuple[float, float]:
    """(CPU ms of this thread, wall ms) of one step's attention, all layers."""
    q, k, v = qkv
    cpu, wall = time.thread_time(), time.perf_counter()
    attn.begin_step([(slots, start, n)])
    for layer in range(layers):
        attn(layer, q, k, v)
    return (time.thread_time() - cpu) * 1e3, (time.perf_counter() - wall) * 1e3


def measure(contexts: list[int], news: list[int], reps: int = 7, block_size: int = 16,
            bandwidth_elems: int | None = None) -> list[dict]:
    """One row per (context, new tokens), one thread: in-place and gathered step ms, bandwidth, bound."""
    from flint.engine.paged_attention import PagedAttention

    shape = DEMO_SHAPE
    layers, heads, kv, d, dtype = (shape[k] for k in ("layers", "heads", "kv_heads", "head_dim", "dtype"))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gen = torch.Generator().manual_seed(0)
        num_slots = -(-(max(contexts) + max(news)) // block_size) * block_size
        k_cache = torch.randn(layers, num_slots, kv, d, generator=gen).to(dtype)
        v_cache = torch.randn(layers, num_slots, kv, d, generator=gen).to(dtype)
        native = PagedAttention(k_cache, v_cache, num_heads=heads, native=True)
        gathered = PagedAttention(k_cache, v_cache, num_heads=heads, native=False)
        bandwidth = ReadBandwidth(bandwidth_elems or BANDWIDTH_ELEMS)
        slots = _slots(num_slots, block_size)
        rows = []
        for context in contexts:
            for n in news:
                qkv = (torch.randn(n, heads, d, generator=gen).to(dtype), torch.randn(n, kv, d, generator=gen).to(dtype),
                       torch.randn(n, kv, d, generator=gen).to(dtype))
                start = context - n
                times = {"in_place": [], "gathered": []}
                gbps = []
                for rep in range(reps + 1):                      # the first repetition warms up
                    gbps.append(bandwidth.sample_gbps())
                    times["in_place"].append(_step_ms(native, slots, start, n, qkv, layers))
                    times["gathered"].append(_step_ms(gathered, slots, start, n, qkv, layers))
                kv_bytes = kv_bytes_read(context, **shape)
                best_gbps = max(gbps[1:])
                bound_ms = kv_bytes / best_gbps / 1e6
                cpu = {k: statistics.median(c for c, _ in v[1:]) for k, v in times.items()}
                wall = {k: statistics.median(w for _, w in v[1:]) for k, v in times.items()}
                rows.append(dict(context=context, new_tokens=n, in_place_ms=cpu["in_place"],
                                 gathered_ms=cpu["gathered"], in_place_wall_ms=wall["in_place"],
                                 gathered_wall_ms=wall["gathered"], kv_mib=kv_bytes / 2**20, read_gbps=best_gbps,
                                 kv_read_bound_ms=bound_ms, in_place_x_bound=cpu["in_place"] / bound_ms))
        return rows
    finally:
        torch.set_num_threads(previous)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def report(rows: list[dict], load_before: float, load_after: float) -> str:
    lines = [
        f"Machine: {machine()}. Load average (1 min) {load_before:.1f} before, {load_after:.1f} after.",
        "Demo model shape: 4 layers, 4 query heads, 2 KV heads, head_dim 64, float32 KV; all layers of "
        "one step; one thread; CPU ms of the step's thread (wall ms in brackets), medians of interleaved "
        "repetitions; bound = KV bytes / best sum bandwidth of the same run.",
        "",
        "| cached context | new tokens | in place ms | per new token ms | gathered (old) ms | "
        "KV read MiB | read GB/s | KV read bound ms | in place / bound |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['context']:,} | {r['new_tokens']} | {r['in_place_ms']:.1f} ({r['in_place_wall_ms']:.0f}) | "
            f"{r['in_place_ms'] / r['new_tokens']:.2f} | {r['gathered_ms']:.1f} ({r['gathered_wall_ms']:.0f}) | "
            f"{r['kv_mib']:.0f} | {r['read_gbps']:.1f} | {r['kv_read_bound_ms']:.1f} | {r['in_place_x_bound']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m flint.bench.attention", description=__doc__.split("\n\n")[0])
    p.add_argument("--contexts", default="8192,32768,131072", help="cached tokens, comma-separated")
    p.add_argument("--new", default="1,3,16", help="new tokens per step, comma-separated")
    p.add_argument("--reps", type=int, default=7, help="timed repetitions per row (after one warm-up)")
    p.add_argument("--out", help="write the markdown table here (printed either way)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = measure([int(c) for c in args.contexts.split(",")], [int(n) for n in args.new.split(",")],
                   reps=args.reps)
    text = report(rows, load_before, os.getloadavg()[0])
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
