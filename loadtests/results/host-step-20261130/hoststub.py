"""Host time of a decode step: the heavy kernels (decode_layer = a layer's 4 Linears + attention, and the lm_head's
TiledLinear) replaced by stubs (return x; return fixed logits), so a step is only the engine's host work plus the
small native calls (embedding, rope table, final norm, argmax). Median step over `rounds` runs of 64 tokens.
usage: python hoststub.py int8 "1,16" rounds"""
import sys, time, os
from pathlib import Path
import numpy as np
import torch
from flint.bench import engine_measure as m
from flint.engine.quant import modules as qm
prec = sys.argv[1]; ns = [int(x) for x in sys.argv[2].split(",")]; rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
path = [p for p in Path(os.path.expanduser("~/.cache/flint/bench-models")).iterdir() if p.name.startswith("bench-") and "hidden512" in p.name][0]
kw = dict(num_threads=1, kv_cache_bytes=1 << 28)
if prec != "fp32": kw["quantization"] = prec
e = m.engine_for(path, **kw)
real = qm.kernel()
class Proxy:
    def __getattr__(self, name): return getattr(real, name)
    def decode_layer(self, x, *a): return x
qm.kernel = lambda: proxy
proxy = Proxy()
lm = e.runner.model.lm_head
V = lm.out_features
logits = torch.randn(64, V, generator=torch.Generator().manual_seed(0))
real_op = lm._op
lm._op = lambda x, *a: logits[: x.shape[0]] if x.shape[0] <= 64 else real_op(x, *a)
def run(n):
    reqs = [m.token_request(e, f"a{i}-{time.time()}", m.prompt_ids(e, 16, seed=i), 64) for i in range(n)]
    steps = []
    while e.has_work():
        s = time.perf_counter(); e.step(); steps.append(time.perf_counter() - s)
    return steps[1:]
for n in ns: run(n); run(n)
for n in ns:
    med = [np.median(run(n)) for _ in range(rounds)]
    print(f"{prec} streams={n}: host step median {np.median(med)*1e3:.3f} ms (best round {min(med)*1e3:.3f} ms)")
