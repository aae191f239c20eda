"""`PagedAttention`: the engine's `AttentionBackend` over the paged KV cache.

Per step the engine calls `begin_step` with, for each sequence in packing
order, its slot map and how many new tokens it brings; then runs the model,
whose layers call the backend with q/k/v of the packed tokens.

Per layer:
1. new k/v go to their slots with one `index_copy_` for the whole batch;
2. decode rows (1 new token) of all sequences run as ONE padded SDPA call
   (keys gathered into [B, Lmax] with a padding mask) — per-op overhead, not
   FLOPs, is what costs on CPU at small batch;
3. prefill chunks (n new tokens after `start` cached ones) attend without
   ever materialising an [n, ctx] score matrix: the CPU flash kernel runs on
   the cached part (no mask) and on the chunk itself (causal), and the two
   partial softmaxes are merged with their log-sum-exps. Other devices, and
   Mistral's sliding window, use SDPA with an explicit mask over query
   sub-chunks, bounded at `_MASK_ELEMS` mask elements per call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

_MASK_ELEMS = 1 << 24


@dataclass
class _Chunk:
    row: int                  # first row of this sequence in the packed T axis
    start: int                # tokens already cached before this step
    n: int                    # new tokens this step
    key_slots: torch.Tensor   # [start + n] int64


class PagedAttention:
    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int,
                 sliding_window: int | None = None):
        self.k_cache, self.v_cache = k_cache, v_cache          # [L, S, KV, D]
        self.num_heads = num_heads
        self.num_kv_heads = k_cache.shape[2]
        self.sliding_window = sliding_window
        self.device = k_cache.device                           # slot maps arrive here; indices are built here
        self._gqa = bool(num_heads != self.num_kv_heads)       # plain bool: torch.compile-friendly
        self._flash = k_cache.device.type == "cpu" and hasattr(
            torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
        self._write_slots = torch.empty(0, dtype=torch.int64)
        self._chunks: list[_Chunk] = []
        self._decode_rows: torch.Tensor | None = None
        self._decode_slots: torch.Tensor | None = None         # [B, Lmax]
        self._decode_mask: torch.Tensor | None = None          # [B, 1, 1, Lmax] bool or None

    def begin_step(self, seqs: list[tuple[torch.Tensor, int, int]]) -> torch.Tensor:
        """seqs: (slot map, cached tokens, new tokens) per sequence in packing order -> positions [T].

        Slot maps must be on the cache's device (the runner moves them); positions and every index
        tensor are built there.
        """
        if len(seqs) == 1 and seqs[0][2] == 1 and self.sliding_window is None:
            return self._begin_single_decode(*seqs[0])
        writes, positions, chunks, dec_rows, dec_slots = [], [], [], [], []
        row = 0
        for slots, start, n in seqs:
            writes.append(slots[start : start + n])
            positions.append(torch.arange(start, start + n, device=self.device))
            keys = slots[: start + n]
            if n == 1:
                if self.sliding_window is not None and start + 1 > self.sliding_window:
                    keys = keys[start + 1 - self.sliding_window :]
                dec_rows.append(row)
                dec_slots.append(keys)
            else:
                chunks.append(_Chunk(row, start, n, keys))
            row += n
        self._write_slots = torch.cat(writes) if len(writes) > 1 else writes[0]
        self._chunks = chunks
        self._decode_rows = torch.tensor(dec_rows, dtype=torch.int64, device=self.device) if dec_rows else None
        self._decode_slots, self._decode_mask = None, None
        if dec_slots:
            lens = [len(s) for s in dec_slots]
            self._decode_slots = pad_sequence(dec_slots, batch_first=True)          # [B, Lmax]
            if min(lens) != max(lens):
                lens_t = torch.tensor(lens, dtype=torch.int64, device=self.device)
                mask = torch.arange(max(lens), device=self.device)[None, :] < lens_t[:, None]   # [B, Lmax]
                self._decode_mask = mask[:, None, None, :]
        self._single_decode = len(dec_rows) == row  # every row is a decode row
        return torch.cat(positions) if len(positions) > 1 else positions[0]

    def _begin_single_decode(self, slots: torch.Tensor, start: int, n: int) -> torch.Tensor:
        """Batch-1 decode, the latency-critical case: the fewest host-side tensor ops."""
        self._write_slots = slots[start : start + 1]
        self._chunks = []
        self._decode_rows = None
        self._decode_slots = slots[: start + 1][None]                               # [1, L]
        self._decode_mask = None
        self._single_decode = True
        return torch.tensor([start], dtype=torch.int64, device=self.device)

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q [T, H, D]; k, v [T, KV, D] -> out [T, H, D]
        kc, vc = self.k_cache[layer_idx], self.v_cache[layer_idx]   # [S, KV, D]
        kc.index_copy_(0, self._write_slots, k)
        vc.index_copy_(0, self._write_slots, v)
        if self._single_decode:
            return self._decode(q, kc, vc)
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        if self._decode_rows is not None:
            out[self._decode_rows] = self._decode(q[self._decode_rows], kc, vc)
        for c in self._chunks:
            out[c.row : c.row + c.n] = self._prefill(q[c.row : c.row + c.n], kc, vc, c)
        return out

    def _decode(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
        # q [B, H, D] -> [B, H, D]
        b, lmax = self._decode_slots.shape
        flat = self._decode_slots.view(-1)
        # index_select, not advanced indexing: ~10x cheaper per call on CPU
        keys = kc.index_select(0, flat).view(b, lmax, *kc.shape[1:]).transpose(1, 2)    # [B, KV, Lmax, D]
        values = vc.index_select(0, flat).view(b, lmax, *vc.shape[1:]).transpose(1, 2)
        o = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=self._decode_mask,
                                           enable_gqa=self._gqa)   # [B, H, 1, D]
        return o[:, :, 0]

    def _prefill(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, c: _Chunk) -> torch.Tensor:
        # q [n, H, D] -> [n, H, D]
        keys = kc.index_select(0, c.key_slots)                      # [start + n, KV, D]
        values = vc.index_select(0, c.key_slots)
        qh = q.transpose(0, 1)[None]                                # [1, H, n, D]
        window = self.sliding_window
        if self._flash and (window is None or c.start + c.n <= window):
            o = self._flash_causal(qh, keys, values, c.start)
        else:
            o = self._masked_causal(qh, self._heads(keys), self._heads(values), c.start, window)
        return o[0].transpose(0, 1)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [ctx, KV, D] -> [1, H, ctx, D], KV heads repeated for grouped-query attention
        x = x.transpose(0, 1)
        group = self.num_heads // self.num_kv_heads
        if group > 1:
            x = x.repeat_interleave(group, dim=0)
        return x[None]

    def _flash_causal(self, q, keys, values, start: int) -> torch.Tensor:
        """q [1, H, n, D]; keys/values [start + n, KV, D] -> [1, H, n, D].

        The chunk's own keys (n of them, causal) are repeated per query head; the cached keys
        (up to the whole context) are NOT: the query heads sharing a KV head become extra query
        rows of that head ([1, KV, group * n, D]), which needs no mask since every chunk query
        sees every cached key. Repeating 8K cached keys per head cost more than the attention.
        """
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        o_self, lse_self = flash(q, self._heads(keys[start:]), self._heads(values[start:]), is_causal=True)
        if start == 0:
            return o_self
        _, h, n, d = q.shape
        kv = self.num_kv_heads
        qg = q.reshape(1, kv, (h // kv) * n, d)                     # head h = kv_head * group + g
        o_past, lse_past = flash(qg, keys[:start].transpose(0, 1)[None], values[:start].transpose(0, 1)[None])
        o_past, lse_past = o_past.reshape(1, h, n, d), lse_past.reshape(1, h, n)
        lse = torch.logaddexp(lse_past, lse_self)                   # [1, H, n]
        return o_past * torch.exp(lse_past - lse)[..., None] + o_self * torch.exp(lse_self - lse)[..., None]

    @staticmethod
    def _masked_causal(q, keys, values, start: int, window: int | None) -> torch.Tensor:
        n, ctx = q.shape[2], keys.shape[2]
        step = max(1, _MASK_ELEMS // ctx)
        k_pos = torch.arange(ctx, device=q.device)[None, :]
        outs = []
        for a in range(0, n, step):
            q_pos = torch.arange(start + a, start + min(n, a + step), device=q.device)[:, None]
            allowed = k_pos <= q_pos                                # [rows, ctx]
            if window is not None:
                allowed &= q_pos - k_pos < window
            outs.append(F.scaled_dot_product_attention(q[:, :, a : a + step], keys, values, attn_mask=allowed))
        return torch.cat(outs, dim=2) if len(outs) > 1 else outs[0]
