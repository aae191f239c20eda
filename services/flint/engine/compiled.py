"""Compiled decode steps, one static-shape graph per batch-size bucket (config `compile=true`).

`compile=false` (the default) is the eager fallback: nothing here runs.

With `compile=true`, a decode step (every sequence brings exactly one new
token) of B sequences is padded up to the smallest bucket Bk >= B of
`compile_batch_sizes` and runs through that bucket's own
`torch.compile(..., dynamic=False)` callable, so every graph has fixed
shapes ([Bk] ids and positions, [Bk, d] hidden states). On CUDA the callables
use mode="reduce-overhead", which captures the same graphs as CUDA graphs; on
CPU inductor's default mode. Steps with more than max(buckets) sequences,
prefill chunks, mixed prefill/decode steps and speculative verification
(several tokens per sequence) run eager.

Start-up pays the compilation: `enable` compiles and runs every bucket (a
padded batch too) through the real runner and paged attention before the
engine takes a request, and logs the seconds per bucket and in total.
Afterwards the callables run under the compiler stance "eager_on_recompile":
a step that would need a new graph runs eager instead of compiling while a
request waits (none is expected; tests run with "fail_on_recompile" to prove
it).

What is compiled: the whole decode forward, one graph per bucket and one
compiled call per step (a compiled call costs ~50-100 us of dynamo/AOT
wrapper time on the 2-core CPU, so graphs split at every attention call,
L + 1 calls per step, measured slower than eager). Paged attention sits in
the graph as an opaque custom op (`flint::decode_attention`) that runs the
eager `PagedAttention`, for two reasons:
- it writes the KV cache in place; when those writes were traced, the
  compiled graph copied the whole cache tensor every step (0.5 tok/s);
- its key count grows every step and differs per sequence. Static shapes
  would mean a fixed key length per bucket: gathering (and attending over)
  the longest allowed context, 131,072 keys, for every row of every step.
Inside the op, `PagedAttention` runs as in eager steps: on a CPU cache its
native kernel (engine/kernels/paged_attention.cpp) reads each row's keys and
values in place through the slot map, so compiled and eager decode share one
attention kernel and neither copies a sequence's KV.

Padding rows (token 0 at position 0) never reach PagedAttention: the op
hands it only the B real rows (so pad rows write no KV slot and the block
allocator never sees them) and zero-fills the pad rows' output. Rows do not
mix anywhere else in the model, so real rows get the eager outputs (up to
float rounding of fused kernels); the runner projects logits of real rows
only.

Whether it pays: on the 2-core CPU (fp32, one thread) the compiled step
measured 0.89-1.04x of eager at batch 1, 3 (padded to 4) and 8 for a 5M-
and a 0.1M-parameter model: decode there is bound by the GEMVs, which the
compiled graph calls exactly as eager does, and the fusion of the small ops
around them saves about what the compiled call costs. So `compile` is off
by default; `flint bench engine` measures it (key `compile`). The path is
for GPUs, where CUDA graphs remove the per-kernel launch cost.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch._library.opaque_object import register_opaque_type   # no public alias in torch 2.13
from torch._opaque_base import OpaqueBase

log = logging.getLogger(__name__)


class _StepAttention(OpaqueBase):
    """The compiled graph's handle on this step's attention (opaque to the compiler).

    `attn` is the step's PagedAttention, `real` how many leading rows are real (the rest are padding).
    """

    def __init__(self):
        self.attn = None
        self.real = 0

    def __reduce__(self):
        # Inductor's graph cache pickles graph inputs into its cache key. This handle's state is per step
        # and never part of a graph; pickled with it, `attn` would drag in the whole KV cache (measured:
        # 40 s per graph for a 1 GiB cache). So it pickles as an empty handle.
        return (_StepAttention, ())


def _decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_idx: torch.Tensor,
                      step: _StepAttention) -> torch.Tensor:
    # q [Bk, H, D]; k, v [Bk, KV, D]; layer_idx 0-dim int64 (CPU) -> [Bk, H, D]: real rows' attention, pad rows 0
    i, b, pad = int(layer_idx), step.real, q.shape[0] - step.real
    if pad == 0:
        return step.attn(i, q, k, v).contiguous()
    return F.pad(step.attn(i, q[:b], k[:b], v[:b]), (0, 0, 0, 0, 0, pad))


@functools.cache
def _register_attention_op() -> None:
    """Register `flint::decode_attention` (once, on first use: nothing happens at import time).

    A custom op is opaque to the compiler: its in-place KV writes and its data-dependent key
    count stay out of the graph. Tagged cudagraph_unsafe so that, on CUDA, inductor partitions the
    graph around it and the dense work between attention calls is captured as CUDA graphs.
    """
    register_opaque_type(_StepAttention, typ="reference")
    op = torch.library.custom_op("flint::decode_attention", mutates_args=(),
                                 tags=(torch.Tag.cudagraph_unsafe,))(_decode_attention)
    op.register_fake(lambda q, k, v, layer_idx, step: torch.empty_like(q, memory_format=torch.contiguous_format))


@torch.compiler.nested_compile_region
def _layer(layer, x: torch.Tensor, rotation: torch.Tensor, layer_idx: torch.Tensor,
           step: _StepAttention) -> torch.Tensor:
    """One decoder layer, compiled once and stamped out for every layer (compile time does not grow with
    depth). The layer index is a tensor input, not a constant, so that every layer is the same region."""
    def attn(_, q, k, v):
        return torch.ops.flint.decode_attention(q, k, v, layer_idx, step)

    return layer(x, rotation, attn, 0, None)


def _decode_forward(model, input_ids: torch.Tensor, positions: torch.Tensor, layer_ids: list[torch.Tensor],
                    step: _StepAttention) -> torch.Tensor:
    """The traced function: `CausalLM.forward` of a whole (unsharded) model, attention through the custom op."""
    x = model.embed(input_ids)                                   # [Bk, d]
    rotation = model.rotary.rotation(positions)
    for layer, layer_idx in zip(model.layers, layer_ids):
        x = _layer(layer, x, rotation, layer_idx, step)
    return model.final_norm(x)


class BucketedDecode:
    """Decode forward: pad to a bucket, run its compiled graph; above the largest bucket run eager.

    `steps` counts decode steps per bucket (key 0 = eager, above the largest bucket).
    `stance` is the compiler stance of steps after start-up (see the module docstring).
    """

    def __init__(self, model, buckets: tuple[int, ...]):
        self.model = model
        self.buckets = tuple(sorted(buckets))
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        _register_attention_op()
        self._layer_ids = [torch.tensor(i) for i in range(model.num_local_layers)]   # 0-dim int64, CPU
        self._step = _StepAttention()
        self._graphs = {b: torch.compile(_decode_forward, dynamic=False, mode=mode) for b in self.buckets}
        self.compiled_buckets: tuple[int, ...] = ()   # buckets compiled and run at start
        self.compile_s: dict[int, float] = {}
        self.steps: Counter[int] = Counter()
        self.stance = "eager_on_recompile"

    def bucket_for(self, batch_size: int) -> int:
        """The smallest bucket >= batch_size, or 0 (eager) above the largest."""
        for b in self.buckets:
            if b >= batch_size:
                return b
        return 0

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor, attn) -> torch.Tensor:
        # input_ids, positions [B] (one token per sequence) -> hidden [B, d]
        b = input_ids.shape[0]
        bucket = self.bucket_for(b)
        self.steps[bucket] += 1
        if not bucket:
            return self.model(input_ids, positions, attn)
        if bucket > b:
            input_ids = F.pad(input_ids, (0, bucket - b))                         # [Bk], pad token 0
            positions = F.pad(positions, (0, bucket - b))                         # [Bk], pad position 0
        self._step.attn, self._step.real = attn, b
        with torch.inference_mode(), torch.compiler.set_stance(self.stance):
            hidden = self._graphs[bucket](self.model, input_ids, positions, self._layer_ids, self._step)  # [Bk, d]
        self._step.attn = None
        return hidden[:b]                                                         # [B, d]

    def warm_up(self, runner, allocator) -> None:
        """Compile every bucket: run it once full (compiles), then one row short (padded) with recompiles
        forbidden, which proves the graph serves padded steps too. Uses scratch KV blocks, freed after."""
        from flint.engine.runner import StepBatch

        bs = allocator.block_size
        stance = self.stance
        # Dynamo keeps graphs per code object: every bucket (of every engine in the process) adds one entry.
        limit = torch._dynamo.config.recompile_limit + len(self.buckets)
        try:
            with torch._dynamo.config.patch(recompile_limit=limit):
                for bucket in self.buckets:
                    t = time.perf_counter()
                    blocks = allocator.allocate(-(-2 * bucket // bs))   # 2 slots per row: one cached, one new
                    try:
                        slots = (torch.from_numpy(blocks)[:, None] * bs + torch.arange(bs)).flatten()
                        for rows, self.stance in ((bucket, "default"), (max(1, bucket - 1), "fail_on_recompile")):
                            seqs = [(i, slots[2 * i : 2 * i + 2], 1, 1) for i in range(rows)]
                            runner.execute(StepBatch(input_ids=torch.zeros(rows, dtype=torch.int64), seqs=seqs,
                                                     logit_rows=torch.arange(rows)))
                    finally:
                        allocator.decref(blocks)
                    self.compile_s[bucket] = time.perf_counter() - t
                    log.info("compiled decode step for batch bucket %d in %.1f s", bucket, self.compile_s[bucket])
        finally:
            self.stance = stance
        self.steps.clear()
        self.compiled_buckets = self.buckets


def enable(engine) -> float:
    """Compile `engine`'s decode step per bucket and warm it up (before any request); returns seconds spent.

    Engines whose runner is not a LocalRunner (shard workers) stay eager. If compiling fails (no C++
    toolchain, an unsupported op), the error is logged and the engine stays eager.
    """
    runner = engine.runner
    if getattr(runner, "compiled_decode", True) is not None:   # not a LocalRunner, or compiled already
        return 0.0
    model = runner.model
    if not (model.is_first and model.is_last and model.all_reduce is None):
        log.warning("compile=true needs the whole model in one process; running eager")
        return 0.0
    t = time.perf_counter()
    try:
        decode = BucketedDecode(model, engine.config.compile_batch_sizes)
        runner.compiled_decode = decode
        decode.warm_up(runner, engine.kv.allocator)
    except Exception:
        log.exception("torch.compile of the decode step failed; running eager")
        runner.compiled_decode = None
    total = time.perf_counter() - t
    if runner.compiled_decode is not None:
        log.info("compiled decode steps for batch buckets %s ready after %.1f s",
                 ",".join(map(str, decode.compiled_buckets)), total)
    return total
