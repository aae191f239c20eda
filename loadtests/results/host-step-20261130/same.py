"""Greedy outputs + events of a mixed workload (decode batch, prefill chunks, speculation, stops), hashed."""
import sys, os, hashlib, json
from pathlib import Path
import torch
from flint.bench import engine_measure as m
from flint.engine.types import SamplingParams
prec = sys.argv[1]
path = [p for p in Path(os.path.expanduser("~/.cache/flint/bench-models")).iterdir() if p.name.startswith("bench-") and "hidden512" in p.name][0]
kw = dict(num_threads=1, kv_cache_bytes=1 << 26, prefill_tokens_per_step=40, speculation="all")
if prec != "fp32": kw["quantization"] = prec
e = m.engine_for(path, **kw)
e.recorded_outputs = {}
for i in range(20):
    ids = m.prompt_ids(e, 8 + 7 * i, seed=i)
    if i % 3 == 0: ids = (ids[:10] * 4)[:40]       # repetitive: drafts get accepted
    samp = SamplingParams(max_tokens=30 + i, temperature=0.8, seed=i) if i % 5 == 4 else None
    e.add_tokens(f"r{i}", ids, 30 + i, speculate=(i % 2 == 0), sampling=samp)
evs = []
while e.has_work():
    evs.extend(repr(x) for x in e.step() if "Final" not in type(x).__name__)
h = hashlib.sha256(json.dumps([sorted(e.recorded_outputs.items()), evs]).encode()).hexdigest()[:16]
print(prec, h, sum(len(v) for v in e.recorded_outputs.values()))
