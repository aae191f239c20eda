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
"""

from __future__ import annotations

from typing import Protocol

import torch


class AttentionBackend(Protocol):
    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...
