"""Engine-side cost of one keystroke at long context: request build, prefix match + admission, slot map, release.

    PYTHONPATH=services python -m flint.bench.admit_cost [--context 131072] [--keystrokes 1000]

A session's document of `--context` tokens is cached once; then each keystroke's prompt is the previous
one plus 3 tokens (so the radix path grows by one edge per keystroke, as for a session continuing its
own document). No model: this is the bookkeeping that runs before the forward pass. Times are this
thread's CPU time (`time.thread_time`), so other processes on a busy machine do not inflate them.
Prints one JSON object: first / p50 / last keystroke per stage, in ms.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from flint.engine.kv_cache import PagedKVCache
from flint.engine.request import Request
from flint.engine.types import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=131_072)
    ap.add_argument("--keystrokes", type=int, default=1000)
    ap.add_argument("--session", default="s1", help="session id ('' = no session: match from the root)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    kv = PagedKVCache(num_layers=1, num_kv_heads=1, head_dim=4, dtype=torch.float32,
                      budget_bytes=args.context * 4 * 32, block_size=16)
    rng = np.random.default_rng(0)

    def request(ids: np.ndarray, rid: str) -> Request:
        return Request(request_id=rid, prompt_ids=ids, sampling=SamplingParams(), max_tokens=16, namespace="m",
                       interactive=True, speculate=False, arrival_s=0.0, arrival_mono=0.0,
                       session_id=args.session)

    def admit(req: Request) -> None:
        match = kv.match(req)
        if not kv.admit(req, match, req.num_tokens + 1):
            raise RuntimeError("KV budget too small for the benchmark")

    def finish(req: Request) -> None:
        req.num_computed = req.num_tokens
        kv.release(req)

    prompt = rng.integers(10, 30_000, args.context)
    first = request(prompt, "document")
    admit(first)
    finish(first)
    stages: dict[str, list[float]] = {"build_ms": [], "match_admit_ms": [], "slot_map_ms": [], "release_ms": []}
    for k in range(args.keystrokes):
        prompt = np.concatenate([prompt, rng.integers(10, 30_000, 3)])
        t0 = time.thread_time()
        req = request(prompt, f"k{k}")
        t1 = time.thread_time()
        admit(req)
        t2 = time.thread_time()
        slot_map = req.slot_map
        t3 = time.thread_time()
        assert req.num_computed == len(prompt) - 3 and len(slot_map) >= len(prompt)
        finish(req)
        t4 = time.thread_time()
        for key, a, b in zip(stages, (t0, t1, t2, t3), (t1, t2, t3, t4)):
            stages[key].append((b - a) * 1e3)
    print(json.dumps({"context_tokens": args.context, "keystrokes": args.keystrokes, **{
        key: {"first": round(v[0], 3), "p50": round(float(np.median(v)), 3), "last": round(v[-1], 3)}
        for key, v in stages.items()}}))


if __name__ == "__main__":
    main()
