"""`PagedAttention`: the engine's `AttentionBackend` over the paged KV cache.

Per step the engine calls `begin_step` with, for each sequence in packing
order, its slot map and how many new tokens it brings; then runs the model,
whose layers call the backend with q/k/v of the packed tokens.

Per layer:
1. new k/v go to their slots with one `index_copy_` for the whole batch;
2. sequences bringing at most `IN_PLACE_MAX_TOKENS` new tokens (decode rows,
   speculative verification, a keystroke's few re-prefilled tokens after a
   long cached context) attend in ONE call of the native kernel
   (kernels/paged_attention.cpp) that reads their keys and values where they
   lie in the cache, through the slot map: a sequence of at most 512
   visible keys is one task with an exact softmax (the decode rows of a
   many-stream step); a longer one is flash-decoding, its context split
   across the thread pool and merged by log-sum-exp. Nothing is copied per
   sequence, so a step reads each cached key and value of a layer once;
3. longer prefill chunks (n new tokens after `start` cached ones) gather
   their keys and attend without ever materialising an [n, ctx] score
   matrix: the CPU flash kernel runs on the cached part (no mask) and on the
   chunk itself (causal), and the two partial softmaxes are merged with their
   log-sum-exps. Other devices, and Mistral's sliding window, use SDPA with
   an explicit mask over query sub-chunks, bounded at `_MASK_ELEMS` mask
   elements per call. At n new tokens the gather is one extra pass over
   keys the chunk's n queries read anyway, so its share shrinks with n.

Where the native kernel is unavailable (no C++ compiler, a non-CPU cache),
the PyTorch fallback runs instead: decode rows of all sequences as ONE padded
SDPA call over gathered [B, Lmax] keys, everything else as in 3.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

log = logging.getLogger(__name__)

_MASK_ELEMS = 1 << 24
# Sequences with at most this many new tokens attend in place (native kernel). Its cost per key grows
# with the queries sharing a KV head (group * n); past a few dozen the gathered flash path's GEMMs win.
IN_PLACE_MAX_TOKENS = 16


def native_kernel():
    """The built kernel module, or None (logged once by the loader) where it cannot be built."""
    from flint.engine import kernels

    try:
        return kernels.load("paged_attention")
    except kernels.KernelUnavailable:
        return None


@dataclass
class _Chunk:
    row: int                  # first row of this sequence in the packed T axis
    start: int                # tokens already cached before this step
    n: int                    # new tokens this step
    key_slots: torch.Tensor   # [start + n] int64


class PagedAttention:
    """`native`: None picks the kernel where it builds and the cache is on the CPU; False forces the
    PyTorch fallback (what other devices run); True requires the kernel."""

    def __init__(self, k_cache: torch.Tensor, v_cache: torch.Tensor, num_heads: int,
                 sliding_window: int | None = None, native: bool | None = None):
        self.k_cache, self.v_cache = k_cache, v_cache          # [L, S, KV, D]
        self.num_heads = num_heads
        self.num_kv_heads = k_cache.shape[2]
        self.sliding_window = sliding_window
        self.device = k_cache.device                           # slot maps arrive here; indices are built here
        self._gqa = bool(num_heads != self.num_kv_heads)       # plain bool: torch.compile-friendly
        self._flash = k_cache.device.type == "cpu" and hasattr(
            torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu")
        self._kernel = None
        if native is not False and k_cache.device.type == "cpu" and k_cache.dtype != torch.float64:
            self._kernel = native_kernel()
        if native and self._kernel is None:
            raise RuntimeError("native paged attention kernel requested but unavailable on this machine/device")
        self._in_place_max = IN_PLACE_MAX_TOKENS if self._kernel is not None else 1
        self._scale = k_cache.shape[-1] ** -0.5
        self._layers = [(k_cache[i], v_cache[i]) for i in range(k_cache.shape[0])]   # views made once, not per call
        self._no_meta = torch.empty((0, 3), dtype=torch.int64)
        self._window = sliding_window or 0
        self._write_slots = torch.empty(0, dtype=torch.int64)
        self._chunks: list[_Chunk] = []
        self._short_slots: list[torch.Tensor] = []             # native: slot map per short sequence
        self._views: dict[int, tuple[torch.Tensor, np.ndarray]] = {}   # CPU: slot maps' numpy views, last step
        self._short_meta: torch.Tensor | None = None           # native: [B, 3] (row, start, n)
        self._decode_rows: torch.Tensor | None = None          # fallback: decode rows, None = all rows
        self._decode_slots: torch.Tensor | None = None         # fallback: [B, Lmax]
        self._decode_mask: torch.Tensor | None = None          # fallback: [B, 1, 1, Lmax] bool or None

    @property
    def native(self) -> bool:
        """True when short sequences attend in place through the native kernel."""
        return self._kernel is not None

    def begin_step(self, seqs: list[tuple[torch.Tensor, int, int]]) -> torch.Tensor:
        """seqs: (slot map, cached tokens, new tokens) per sequence in packing order -> positions [T].

        Slot maps must be on the cache's device (the runner moves them); positions and every index
        tensor are built there. On the CPU the per-sequence work is plain Python and numpy (a slot map's
        numpy view, a scalar read or a slice of it); positions, write slots and the kernel's (row, start, n)
        meta are then one array each, so a 16-sequence decode step makes a handful of tensors, not 50.
        """
        if self.device.type != "cpu":
            return self._begin_step_tensors(seqs)
        maps, starts, news = zip(*seqs)
        views = self._numpy_views(maps)
        b = len(maps)
        start_arr = np.array(starts, dtype=np.int64)
        meta = np.empty((b, 3), dtype=np.int64)                 # (row, start, n) per sequence
        meta[:, 1] = start_arr
        if max(news) == 1:                                     # decode: position = start, one write slot each
            writes = np.array([v[s] for v, s in zip(views, starts)], dtype=np.int64)
            positions = start_arr
            meta[:, 0] = np.arange(b)
            meta[:, 2] = 1
        else:
            writes = np.concatenate([v[s : s + n] for v, s, n in zip(views, starts, news)])
            meta[:, 2] = news
            ends = np.cumsum(meta[:, 2])
            meta[:, 0] = ends - meta[:, 2]
            # token j of sequence b sits at row meta[b, 0] + j, position starts[b] + j
            positions = np.arange(int(ends[-1]), dtype=np.int64) + np.repeat(start_arr - meta[:, 0], meta[:, 2])
        self._write_slots = torch.from_numpy(writes)
        if max(news) <= self._in_place_max:
            short, self._chunks = range(b), []
        else:
            short = [i for i, n in enumerate(news) if n <= self._in_place_max]
            self._chunks = [_Chunk(int(meta[i, 0]), starts[i], n, maps[i][: starts[i] + n])
                            for i, n in enumerate(news) if n > self._in_place_max]
        if self._kernel is not None:
            self._all_short = not self._chunks
            self._short_slots = list(maps) if not self._chunks else [maps[i] for i in short]
            meta = meta if not self._chunks else meta[short]
            self._short_meta = torch.from_numpy(meta) if self._short_slots else None
        else:
            self._begin_short([(int(meta[i, 0]), starts[i], news[i], maps[i]) for i in short], all_rows=not self._chunks)
        return torch.from_numpy(positions)

    def _numpy_views(self, maps: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
        """Each slot map's numpy view (shared memory). Views of the maps of the previous step are reused:
        `Tensor.numpy()` costs ~0.9 us, and a running sequence hands over the same slot-map object every
        step until its map grows (`Request.slot_map`). The cache holds the maps it saw last step only."""
        seen, kept = self._views, {}
        out = []
        for m in maps:
            entry = seen.get(id(m))
            if entry is None or entry[0] is not m:
                entry = (m, m.numpy())
            kept[id(m)] = entry
            out.append(entry[1])
        self._views = kept
        return out

    def _begin_step_tensors(self, seqs: list[tuple[torch.Tensor, int, int]]) -> torch.Tensor:
        """`begin_step` for caches off the CPU: index tensors built with torch ops on the cache's device."""
        if len(seqs) == 1:                                     # batch 1, the latency-critical case
            slots, start, n = seqs[0]
            self._write_slots = slots[start : start + n]
            positions = torch.arange(start, start + n, device=self.device)
            if n <= self._in_place_max:
                self._chunks = []
                self._begin_short([(0, start, n, slots)], all_rows=True)
            else:
                self._chunks = [_Chunk(0, start, n, slots[: start + n])]
                self._begin_short([], all_rows=False)
            return positions
        writes, positions, short, chunks = [], [], [], []
        row = 0
        for slots, start, n in seqs:
            writes.append(slots[start : start + n])
            positions.append(torch.arange(start, start + n, device=self.device))
            if n <= self._in_place_max:
                short.append((row, start, n, slots))
            else:
                chunks.append(_Chunk(row, start, n, slots[: start + n]))
            row += n
        self._write_slots = torch.cat(writes)
        self._chunks = chunks
        self._begin_short(short, all_rows=not chunks)
        return torch.cat(positions)

    def _begin_short(self, short: list[tuple[int, int, int, torch.Tensor]], all_rows: bool) -> None:
        """Plan the sequences that take the short path: (row, start, n, slot map) each."""
        self._all_short = all_rows and bool(short)
        if self._kernel is not None:
            self._short_slots = [s for *_, s in short]
            self._short_meta = torch.tensor([m[:3] for m in short], dtype=torch.int64) if short else None
            return
        # Fallback: decode rows (n == 1) gathered into one padded [B, Lmax] SDPA call.
        self._decode_rows = None if all_rows else (
            torch.tensor([r for r, *_ in short], dtype=torch.int64, device=self.device) if short else None)
        self._decode_slots, self._decode_mask = None, None
        if not short:
            return
        keys = []
        for _, start, _, slots in short:
            lo = start + 1 - self.sliding_window if self.sliding_window and start + 1 > self.sliding_window else 0
            keys.append(slots[lo : start + 1])
        if len(keys) == 1:
            self._decode_slots = keys[0][None]                                        # [1, L]
            return
        lens = [len(s) for s in keys]
        self._decode_slots = pad_sequence(keys, batch_first=True)                     # [B, Lmax]
        if min(lens) != max(lens):
            lens_t = torch.tensor(lens, device=self.device)
            mask = torch.arange(max(lens), device=self.device)[None, :] < lens_t[:, None]   # [B, Lmax]
            self._decode_mask = mask[:, None, None, :]

    def in_place_plan(self, layer_idx: int) -> tuple | None:
        """When every sequence of the step attends in place on float32 caches: the kernel arguments of layer
        `layer_idx` after rope (kc, vc, write slots, heads, slot maps, meta, window, scale), for a whole-layer
        native call (model/linear.py `decode_layer`); else None."""
        kc, vc = self._layers[layer_idx]
        if self._kernel is None or self._chunks or not self._short_slots or kc.dtype != torch.float32:
            return None
        return (kc, vc, self._write_slots, self.num_heads, self._short_slots, self._short_meta, self._window,
                self._scale)

    def attend_qkv(self, layer_idx: int, qkv: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor | None:
        """The layer's attention straight from its fused QKV output, or None where the kernel does not take it.

        qkv [T, (H + 2 KV) * D] (float32, contiguous; q and k not yet rotated), rotation [T, 1, D/2, 2]
        (`rope.Rotary.rotation`) -> out [T, H, D]. One kernel call rotates q and k in place, writes k and v
        to their slots and attends for the short sequences; long prefill chunks then attend as in `__call__`.
        """
        kc, vc = self._layers[layer_idx]
        if (self._kernel is None or qkv.dtype != torch.float32 or kc.dtype != torch.float32
                or not qkv.is_contiguous() or rotation.dtype != torch.float32):
            return None
        t, d = qkv.shape[0], kc.shape[-1]
        out = torch.empty((t, self.num_heads, d), dtype=qkv.dtype, device=qkv.device)
        self._kernel.rope_attend(out, qkv, rotation, kc, vc, self._write_slots, self.num_heads, self._short_slots,
                                 self._short_meta if self._short_slots else self._no_meta, self._window, self._scale)
        if self._chunks:
            q = qkv.view(t, -1, d)[:, : self.num_heads]
            for c in self._chunks:
                out[c.row : c.row + c.n] = self._prefill(q[c.row : c.row + c.n], kc, vc, c)
        return out

    def __call__(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q [T, H, D]; k, v [T, KV, D] -> out [T, H, D]
        kc, vc = self._layers[layer_idx]                           # [S, KV, D]
        kc.index_copy_(0, self._write_slots, k)
        vc.index_copy_(0, self._write_slots, v)
        if self._kernel is not None:
            out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
            if self._short_slots:
                if q.stride(-1) != 1:
                    q = q.contiguous()
                self._kernel.attend(out, q, kc, vc, self._short_slots, self._short_meta, self._window, self._scale)
        elif self._all_short:
            return self._decode(q, kc, vc)
        else:
            out = torch.empty_like(q, memory_format=torch.contiguous_format)
            if self._decode_rows is not None:
                out[self._decode_rows] = self._decode(q[self._decode_rows], kc, vc)
        for c in self._chunks:
            out[c.row : c.row + c.n] = self._prefill(q[c.row : c.row + c.n], kc, vc, c)
        return out

    def _decode(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor) -> torch.Tensor:
        # Fallback. q [B, H, D] -> [B, H, D]
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
