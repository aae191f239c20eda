"""`DenseAttention`: the reference attention backend.

One contiguous KV buffer per sequence ([layers, kv_heads, max_tokens, D]),
attention by `scaled_dot_product_attention` per sequence with an explicit
causal (and, for Mistral, sliding-window) mask. Simple enough to be obviously
right: the logits tests compare the model through it with transformers, and the
engine can use it as its simplest cache.

Use:
    attn = DenseAttention.for_model(model)
    attn.add_sequence("a", max_tokens=512)
    positions = attn.begin_step([("a", 7)])      # 7 new tokens of "a" -> positions [7]
    hidden = model(ids, positions, attn)
    attn.truncate("a", 5)                         # drop rejected speculative tokens
    attn.remove_sequence("a")

`begin_step` takes (sequence id, new token count) pairs in the order their
tokens are packed along T; each sequence's new tokens follow its cached ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

from flint.errors import InvalidArgument, NotFound, ResourceExhausted


class DenseAttention:
    def __init__(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        sliding_window: int | None = None,
    ):
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.dtype, self.device, self.sliding_window = dtype, torch.device(device), sliding_window
        self._k: dict[Hashable, torch.Tensor] = {}   # seq -> [L, KV, max_tokens, D]
        self._v: dict[Hashable, torch.Tensor] = {}
        self._len: dict[Hashable, int] = {}
        self._step: list[tuple[Hashable, int, int, int]] = []  # (seq, row offset in T, cache start, n)

    @classmethod
    def for_model(cls, model) -> "DenseAttention":
        """A cache shaped for `model` (a CausalLM, possibly one shard of it)."""
        return cls(
            num_layers=model.num_local_layers,
            num_kv_heads=model.layers[0].n_kv,
            head_dim=model.config.head_dim,
            dtype=model.dtype,
            device=model.device,
            sliding_window=model.config.sliding_window,
        )

    def add_sequence(self, seq_id: Hashable, max_tokens: int) -> None:
        if seq_id in self._len:
            raise InvalidArgument(f"sequence {seq_id!r} already exists")
        shape = (self.num_layers, self.num_kv_heads, max_tokens, self.head_dim)
        self._k[seq_id] = torch.empty(shape, dtype=self.dtype, device=self.device)
        self._v[seq_id] = torch.empty(shape, dtype=self.dtype, device=self.device)
        self._len[seq_id] = 0

    def remove_sequence(self, seq_id: Hashable) -> None:
        self._require(seq_id)
        del self._k[seq_id], self._v[seq_id], self._len[seq_id]

    def length(self, seq_id: Hashable) -> int:
        """Tokens cached for `seq_id` (including those of the step begun last)."""
        self._require(seq_id)
        return self._len[seq_id]

    def truncate(self, seq_id: Hashable, length: int) -> None:
        """Forget cached tokens from `length` on (e.g. rejected draft tokens)."""
        self._require(seq_id)
        if not 0 <= length <= self._len[seq_id]:
            raise InvalidArgument(f"truncate length {length} outside [0, {self._len[seq_id]}]")
        self._len[seq_id] = length

    def begin_step(self, batch: Sequence[tuple[Hashable, int]]) -> torch.Tensor:
        """Plan one forward pass; returns positions [T] (int64) for the packed tokens."""
        plan, positions, row = [], [], 0
        for seq_id, n in batch:
            self._require(seq_id)
            start = self._len[seq_id]
            if start + n > self._k[seq_id].shape[2]:
                raise ResourceExhausted(
                    f"sequence {seq_id!r}: {start + n} tokens exceed its cache of {self._k[seq_id].shape[2]}"
                )
            plan.append((seq_id, row, start, n))
            positions.append(torch.arange(start, start + n))
            row += n
        for seq_id, _, start, n in plan:
            self._len[seq_id] = start + n
        self._step = plan
        return torch.cat(positions).to(self.device) if positions else torch.empty(0, dtype=torch.long)

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q [T, H, D]; k, v [T, KV, D] -> out [T, H, D]
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        for seq_id, row, start, n in self._step:
            end = start + n
            kc, vc = self._k[seq_id][layer_idx], self._v[seq_id][layer_idx]  # [KV, max, D]
            kc[:, start:end] = k[row : row + n].transpose(0, 1)
            vc[:, start:end] = v[row : row + n].transpose(0, 1)
            if n == 1:
                out[row] = self._decode_one(q[row], kc, vc, end)
                continue
            qs = q[row : row + n].transpose(0, 1)[None]                   # [1, H, n, D]
            o = F.scaled_dot_product_attention(
                qs, kc[None, :, :end], vc[None, :, :end], attn_mask=self._mask(start, n), enable_gqa=True
            )                                                              # [1, H, n, D]
            out[row : row + n] = o[0].transpose(0, 1)
        return out

    def _decode_one(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, end: int) -> torch.Tensor:
        """One query token: grouped matmuls (CPU flash SDPA costs milliseconds for a single query)."""
        lo = max(0, end - self.sliding_window) if self.sliding_window else 0
        kv, d = kc.shape[0], kc.shape[-1]
        qg = q.reshape(kv, -1, d) * d**-0.5                               # [KV, G, D]
        scores = torch.matmul(qg, kc[:, lo:end].transpose(1, 2))          # [KV, G, L]
        probs = scores.float().softmax(dim=-1).to(vc.dtype)
        return torch.matmul(probs, vc[:, lo:end]).reshape(q.shape)        # [H, D]

    def _mask(self, start: int, n: int) -> torch.Tensor:
        """Bool [n, start + n]: query i (position start + i) sees key j iff j <= start + i (and in window)."""
        q_pos = torch.arange(start, start + n, device=self.device)[:, None]
        k_pos = torch.arange(start + n, device=self.device)[None, :]
        allowed = k_pos <= q_pos
        if self.sliding_window is not None:
            allowed &= q_pos - k_pos < self.sliding_window
        return allowed

    def _require(self, seq_id: Hashable) -> None:
        if seq_id not in self._len:
            raise NotFound(f"sequence {seq_id!r} is not in the attention cache")
