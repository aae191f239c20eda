"""`torch.compile` for decode steps (config `compile=true`; eager is the fallback).

What is compiled: the model's dense work between attention calls (norms,
fused QKV, rotary, o_proj, MLP, final norm). Attention stays eager behind
`torch.compiler.disable`: it writes the KV cache in place, and a compiled
graph that mutates the cache would copy the whole cache tensor every step
(measured: 0.5 tok/s instead of hundreds).

Shapes: on CPU one dynamic-shape graph serves every batch size above 1 (plus
the batch-1 specialisation dynamo always makes); `compile_batch_sizes` are
the sizes warmed up at start so compilation is paid before the first
request. Static per-bucket graphs matter for CUDA graphs, which this CPU
build does not have. Prefill chunks and speculative verification run eager.

Whether it pays is measured by `flint bench engine` (key `compile`).
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger(__name__)


class _EagerAttention:
    """Keeps the paged-attention call (in-place KV writes) out of the compiled graph."""

    def __init__(self, attn):
        self.attn = attn

    @torch.compiler.disable
    def __call__(self, layer_idx, q, k, v):
        return self.attn(layer_idx, q, k, v)


class CompiledDecode:
    """Replaces `model.forward`: pure decode steps go through the compiled function."""

    def __init__(self, model):
        self.model = model
        self.eager = model.forward
        raw = type(model).forward.__wrapped__           # undecorated: inference_mode breaks compiled in-place ops
        self._compiled = torch.compile(lambda *a, **k: raw(model, *a, **k), dynamic=True)

    def __call__(self, input_ids, positions, attn, **kw):
        if getattr(attn, "_single_decode", False) and not kw:
            with torch.no_grad():
                return self._compiled(input_ids, positions, _EagerAttention(attn))
        return self.eager(input_ids, positions, attn, **kw)


def enable(engine) -> float:
    """Compile the decode path of `engine`'s local model and warm it up; returns seconds spent."""
    model = engine.runner.model
    if isinstance(model.forward, CompiledDecode):
        return 0.0
    t = time.perf_counter()
    model.forward = CompiledDecode(model)
    try:
        for size in engine.config.compile_batch_sizes:
            for i in range(size):
                engine.add_tokens(f"__warmup-{size}-{i}", [1 + i, 2, 3, 4], 3, namespace="__warmup")
            while engine.has_work():
                engine.step()
    except Exception:  # compile toolchain missing or unsupported op: stay eager
        log.exception("torch.compile of the decode step failed; running eager")
        model.forward = model.forward.eager
    if engine.kv.radix is not None:
        engine.kv.radix.clear()
    return time.perf_counter() - t
