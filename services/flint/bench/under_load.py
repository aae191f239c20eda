"""Keystroke TTFT while another request prefills a long prompt, vs idle (issue #10, Must-have 6).

    PYTHONPATH=services python -m flint.bench.under_load --context 8192 [--set key=value ...]

One engine (the demo checkpoint) stepped by a thread as in a replica; a client thread sends 8-token
interactive requests (max_tokens 1) at random gaps, first on an idle engine, then while a
`--context`-token prompt prefills as bulk and as interactive. TTFT = submit -> the request's Final
(its only token). Prints one JSON object; loadtests/results/scheduler.md records the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.request import Request
from flint.engine.types import Final, SamplingParams


class SteppedEngine:
    """The engine stepped by its own thread; records when each request's Final came out."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.done_at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self.engine.has_work():
                time.sleep(0.0005)
                continue
            for event in self.engine.step():
                if isinstance(event, Final):
                    self.done_at[event.request_id] = time.perf_counter()

    def submit(self, rid: str, ids: np.ndarray, *, bulk: bool) -> float:
        now_wall, now = time.time(), time.perf_counter()
        self.engine.add(Request(request_id=rid, prompt_ids=np.asarray(ids, dtype=np.int64),
                                sampling=SamplingParams(max_tokens=1), max_tokens=1,
                                namespace=self.engine.model_name, interactive=not bulk, speculate=False,
                                arrival_s=now_wall, arrival_mono=now))
        return now

    def wait(self, rid: str, timeout_s: float = 3600.0) -> float:
        deadline = time.perf_counter() + timeout_s
        while rid not in self.done_at:
            if time.perf_counter() > deadline:
                raise TimeoutError(rid)
            time.sleep(0.0005)
        return self.done_at[rid]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def keystrokes(stepped: SteppedEngine, rng, tag: str, *, count: int | None, gap_ms: tuple[int, int],
               while_pending: str | None = None) -> list[float]:
    """TTFTs (ms) of 8-token requests sent one at a time with random gaps."""
    out: list[float] = []
    i = 0
    while (count is None or i < count) and (while_pending is None or while_pending not in stepped.done_at):
        rid = f"{tag}-{i}"
        t0 = stepped.submit(rid, rng.integers(10, 1000, 8), bulk=False)
        out.append((stepped.wait(rid) - t0) * 1e3)
        time.sleep(rng.uniform(*gap_ms) / 1e3)
        i += 1
    return out


def percentiles(ms: list[float]) -> dict:
    return {"n": len(ms), "p50": round(float(np.percentile(ms, 50)), 1), "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(max(ms)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--idle", type=int, default=30)
    ap.add_argument("--set", action="append", default=[], help="engine config key=value (int)")
    args = ap.parse_args()
    overrides = {k: int(v) for k, v in (s.split("=", 1) for s in args.set)}
    engine = Engine.from_config(EngineConfig.from_dict(dict(kv_cache_bytes=1 << 30), **overrides))
    rng = np.random.default_rng(0)
    stepped = SteppedEngine(engine)
    try:
        keystrokes(stepped, rng, "warm", count=5, gap_ms=(5, 10))
        result = {"context_tokens": args.context, "overrides": overrides,
                  "load_avg_start": os.getloadavg()[0], "idle_ttft_ms": {}, "under_long_prefill_ttft_ms": {}}
        idle: list[float] = []
        for kind in ("bulk", "interactive"):
            idle += keystrokes(stepped, rng, f"idle-{kind}", count=args.idle // 2, gap_ms=(20, 60))
            long_id = f"long-{kind}"
            t0 = stepped.submit(long_id, rng.integers(10, 1000, args.context), bulk=kind == "bulk")
            time.sleep(0.05)
            under = keystrokes(stepped, rng, f"under-{kind}", count=None, gap_ms=(100, 300), while_pending=long_id)
            result["under_long_prefill_ttft_ms"][kind] = percentiles(under)
            result[f"long_prefill_s_{kind}"] = round(stepped.wait(long_id) - t0, 1)
        result["idle_ttft_ms"] = percentiles(idle)
        for kind in ("bulk", "interactive"):
            result[f"p99_ratio_{kind}"] = round(result["under_long_prefill_ttft_ms"][kind]["p99"]
                                                / result["idle_ttft_ms"]["p99"], 2)
        result["load_avg_end"] = os.getloadavg()[0]
        print(json.dumps(result))
    finally:
        stepped.close()


if __name__ == "__main__":
    main()
