"""The attention contract between the model and the KV cache.

The model never owns a KV cache. Each decoder layer computes q, k, v for the
tokens of this step (all sequences of the batch packed along one axis, with
rotary embeddings already applied) and hands them to an `AttentionBackend`,
which stores k/v wherever its cache lives and returns the attention output:

    out = backend(layer_idx, q, k, v)
    # q:   [T, n_heads, head_dim]
    # k,v: [T, n_kv_heads, head_dim]
    # out: [T, n_heads, head_dim]

Which sequence each of the T tokens belongs to, its position and the cache
slots it may attend to are the backend's business (set up before the forward
pass by whoever schedules the step). This keeps the model a plain module that
the paged engine cache, the dense reference cache below and tensor-parallel
shards all drive the same way.

Details the implementations rely on:
- `layer_idx` is local to the model shard: 0 is the shard's first layer, so a
  pipeline stage's cache has `model.num_local_layers` layers;
- q, k, v may be non-contiguous views of the fused QKV output (k/v of the
  same tokens share storage with q); copy what you keep;
- under tensor parallelism the head counts are the rank's local ones;
- rotary embeddings are applied before the call, from the per-token positions
  given to `model.forward`, so a backend never needs positions to rotate, only
  to mask;
- models with a sliding window (Mistral) expose `config.sliding_window`: a key
  at position j is visible to a query at position i iff i - window < j <= i.
  `DenseAttention` (engine/model/dense.py) is the reference implementation.

A backend may also offer `attend_qkv(layer_idx, qkv, rotation) -> out or None`: the layer's fused QKV
output [T, (H + 2 KV) * D] before rotary, and the step's `Rotary.rotation`; it rotates, stores k/v and
attends in one call, or returns None where it cannot (the layer then runs the contract above). The
paged engine cache does this on the CPU (`PagedAttention.attend_qkv`, one native call per layer).
"""

from __future__ import annotations

from typing import Protocol

import torch


class AttentionBackend(Protocol):
    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...
