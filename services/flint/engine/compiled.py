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

What is compiled: the model's dense work between attention calls, as three
segments per bucket: embedding + rotary + layer 0 up to attention; the rest
of layer i + layer i+1 up to attention (one graph for every i: layers are
arguments, not constants, so the graph count does not grow with depth and
no per-layer recompile hits dynamo's recompile limit); the rest of the last
layer + final norm. Paged attention runs eager between the graphs, for two
measured reasons:
- it writes the KV cache in place, and a compiled graph that mutates the
  cache copied the whole cache tensor every step (0.5 tok/s);
- its key count grows every step and differs per sequence. Static shapes
  would mean a fixed key length per bucket: gathering (and attending over)
  the longest allowed context, 131,072 keys, for every row of every step.

Padding rows (token 0 at position 0) never reach attention: `_RealRows`
hands PagedAttention only the B real rows (so pad rows write no KV slot and
the block allocator never sees them) and zero-fills the pad rows' output.
Rows do not mix anywhere else in the model, so real rows' outputs are the
eager ones; the runner projects logits of real rows only.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class _RealRows:
    """Attention over the first `real` rows of a padded batch; pad rows get zeros and touch no KV slot."""

    def __init__(self, attn, real: int):
        self.attn, self.real = attn, real

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q [Bk, H, D]; k, v [Bk, KV, D] -> [Bk, H, D]
        b, pad = self.real, q.shape[0] - self.real
        if pad == 0:
            return self.attn(layer_idx, q, k, v)
        out = self.attn(layer_idx, q[:b], k[:b], v[:b])                          # [B, H, D]
        return F.pad(out, (0, 0, 0, 0, 0, pad))                                  # [Bk, H, D]


# The compiled segments of a decode forward. Layers are passed in as arguments, so one graph per
# segment and bucket serves every layer (no recompile per layer, no per-layer cache entries).
def _first(model, input_ids, positions):
    # input_ids, positions [Bk] -> x [Bk, d], rotation, q/k/v of layer 0
    x = model.embed(input_ids)
    rotation = model.rotary.rotation(positions)
    return (x, rotation, *model.layers[0].pre_attention(x, rotation))


def _between(done, following, x, o, rotation, all_reduce):
    # the rest of layer i (`done`, attention output o [Bk, H, D]) and the start of layer i + 1
    x = done.post_attention(x, o, all_reduce)
    return (x, *following.pre_attention(x, rotation))


def _last(model, x, o):
    # the rest of the last layer and the final norm -> hidden [Bk, d]
    return model.final_norm(model.layers[-1].post_attention(x, o, model.all_reduce))


class _BucketGraphs:
    """One bucket's compiled callables: `torch.compile(dynamic=False)` of each segment."""

    def __init__(self, mode: str | None):
        self.first, self.between, self.last = (torch.compile(f, dynamic=False, mode=mode)
                                               for f in (_first, _between, _last))

    def forward(self, model, input_ids, positions, attn) -> torch.Tensor:
        # input_ids, positions [Bk] -> hidden [Bk, d]; attention runs eager between the graphs
        layers = model.layers
        x, rotation, q, k, v = self.first(model, input_ids, positions)
        for i in range(len(layers) - 1):
            x, q, k, v = self.between(layers[i], layers[i + 1], x, attn(i, q, k, v), rotation, model.all_reduce)
        return self.last(model, x, attn(len(layers) - 1, q, k, v))


class BucketedDecode:
    """Decode forward: pad to a bucket, run its compiled graphs; above the largest bucket run eager.

    `steps` counts decode steps per bucket (key 0 = eager, above the largest bucket).
    `stance` is the compiler stance of steps after start-up (see the module docstring).
    """

    def __init__(self, model, buckets: tuple[int, ...]):
        self.model = model
        self.buckets = tuple(sorted(buckets))
        mode = "reduce-overhead" if model.device.type == "cuda" else None
        self._graphs = {b: _BucketGraphs(mode) for b in self.buckets}
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
        with torch.inference_mode(), torch.compiler.set_stance(self.stance):
            hidden = self._graphs[bucket].forward(self.model, input_ids, positions, _RealRows(attn, b))
        return hidden[:b]                                                         # [B, d]

    def warm_up(self, runner, allocator) -> None:
        """Compile every bucket by running it (full and, when it pads, one row short) on scratch KV blocks."""
        from flint.engine.runner import StepBatch

        bs = allocator.block_size
        stance, self.stance = self.stance, "default"
        # Dynamo keeps its graphs per code object: every bucket adds one entry to each segment.
        limit = max(torch._dynamo.config.recompile_limit, len(self.buckets) + 1)
        try:
            with torch._dynamo.config.patch(recompile_limit=limit):
                for bucket in self.buckets:
                    t = time.perf_counter()
                    blocks = allocator.allocate(-(-2 * bucket // bs))   # 2 slots per row: one cached, one new
                    try:
                        slots = (torch.from_numpy(blocks)[:, None] * bs + torch.arange(bs)).flatten()
                        for rows in dict.fromkeys((bucket, max(1, bucket - 1))):
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
    if not hasattr(runner, "compiled_decode") or runner.compiled_decode is not None:
        return 0.0
    t = time.perf_counter()
    decode = BucketedDecode(runner.model, engine.config.compile_batch_sizes)
    runner.compiled_decode = decode
    try:
        decode.warm_up(runner, engine.kv.allocator)
    except Exception:
        log.exception("torch.compile of the decode step failed; running eager")
        runner.compiled_decode = None
    total = time.perf_counter() - t
    if runner.compiled_decode is not None:
        log.info("compiled decode steps for batch buckets %s ready after %.1f s",
                 ",".join(map(str, decode.compiled_buckets)), total)
    return total
