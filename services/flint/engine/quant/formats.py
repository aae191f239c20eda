"""flint's quantized weight formats and their PyTorch reference (quantize, pack, dequantize).

    int8: w[n, k] = scale[n] * q[n, k]                 q int8 in [-127, 127], one scale per output channel
    int4: w[n, k] = scale[n, g] * q[n, k] + min[n, g]  q in 0..15, g = k // group_size

K (input features) is padded with zero-weight columns to `Kp`, a multiple of 16 (int8) or of the group
size (int4), so kernels never handle a ragged tail. int4 packs two columns per byte: in every
32-column chunk, byte j holds column j in its low nibble and column j + 16 in its high nibble (one
16-byte load unpacks to two 16-float vectors).

`QuantWeight` supports what fusing and repacking need: row selection/permutation (`rows`) and
concatenation along output channels (`QuantWeight.cat`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from flint.engine.config import QUANT_GROUP_SIZES as GROUP_SIZES
from flint.errors import InvalidArgument

INT8_BLOCK = 16


@dataclass(frozen=True)
class QuantWeight:
    bits: int                    # 8 or 4
    data: torch.Tensor           # int8 [N, Kp] or uint8 [N, Kp // 2]
    scale: torch.Tensor          # fp32 [N] (int8) or [N, Kp // group_size] (int4)
    mins: torch.Tensor | None    # fp32 [N, Kp // group_size] (int4)
    in_features: int             # K before padding
    group_size: int = 0          # int4 only

    @property
    def out_features(self) -> int:
        return int(self.data.shape[0])

    @property
    def padded_in_features(self) -> int:
        return int(self.data.shape[1]) * (2 if self.bits == 4 else 1)

    @property
    def nbytes(self) -> int:
        """Bytes a full pass over the weight reads (codes, scales, mins)."""
        return sum(t.numel() * t.element_size() for t in (self.data, self.scale, self.mins) if t is not None)

    def rows(self, index: torch.Tensor | slice) -> "QuantWeight":
        """Output channels `index` (a permutation, a subset or a slice)."""
        if not isinstance(index, slice):
            index = index.to(self.data.device)
        pick = (lambda t: t[index].contiguous()) if isinstance(index, slice) else (lambda t: t.index_select(0, index))
        return QuantWeight(self.bits, pick(self.data), pick(self.scale),
                           None if self.mins is None else pick(self.mins), self.in_features, self.group_size)

    def to(self, device) -> "QuantWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantWeight(self.bits, move(self.data), move(self.scale), move(self.mins), self.in_features,
                           self.group_size)

    @staticmethod
    def cat(parts: list["QuantWeight"]) -> "QuantWeight":
        """Concatenate along output channels (fused q/k/v or gate/up); formats must match."""
        first = parts[0]
        for p in parts[1:]:
            if (p.bits, p.in_features, p.group_size, p.data.shape[1]) != (
                    first.bits, first.in_features, first.group_size, first.data.shape[1]):
                raise InvalidArgument("cannot fuse quantized weights of different formats or input sizes")
        mins = None if first.mins is None else torch.cat([p.mins for p in parts])
        return QuantWeight(first.bits, torch.cat([p.data for p in parts]), torch.cat([p.scale for p in parts]),
                           mins, first.in_features, first.group_size)

    def dequantize(self) -> torch.Tensor:
        """fp32 [N, K] (the reference the kernels are tested against)."""
        if self.bits == 8:
            w = self.data.float() * self.scale[:, None]
        else:
            g = self.group_size
            q = unpack_int4(self.data).float()                                   # [N, Kp]
            n, kp = q.shape
            w = (q.view(n, kp // g, g) * self.scale[..., None] + self.mins[..., None]).view(n, kp)
        return w[:, : self.in_features]


def _pad_columns(w: torch.Tensor, multiple: int) -> torch.Tensor:
    k = w.shape[1]
    kp = -(-k // multiple) * multiple
    return w if kp == k else torch.nn.functional.pad(w, (0, kp - k))


def quantize_int8(w: torch.Tensor) -> QuantWeight:
    """Symmetric per-output-channel int8 of w [N, K]."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return QuantWeight(8, _pad_columns(q, INT8_BLOCK).contiguous(), scale.contiguous(), None, w.shape[1])


def quantize_int4(w: torch.Tensor, group_size: int) -> QuantWeight:
    """Asymmetric group-wise int4 of w [N, K]: per group of `group_size` input columns a scale and a min."""
    if group_size not in GROUP_SIZES:
        raise InvalidArgument(f"int4 group size must be one of {GROUP_SIZES}, got {group_size}")
    w = w.detach().float()
    n, k = w.shape
    wp = _pad_columns(w, group_size)
    groups = wp.view(n, -1, group_size)
    lo, hi = groups.amin(dim=-1), groups.amax(dim=-1)
    scale = (hi - lo) / 15.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round((groups - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8).view(n, -1)
    return QuantWeight(4, pack_int4(q), scale.contiguous(), lo.contiguous(), k, group_size)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 codes [N, Kp] (0..15, Kp a multiple of 32) -> packed [N, Kp // 2] in flint's chunk layout."""
    n, kp = q.shape
    chunks = q.to(torch.uint8).view(n, kp // 32, 2, 16)
    return (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(n, kp // 2).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """packed [N, Kp // 2] -> uint8 codes [N, Kp]."""
    n, half = packed.shape
    chunks = packed.view(n, half // 16, 1, 16)
    return torch.cat([chunks & 0x0F, chunks >> 4], dim=2).reshape(n, half * 2)


@dataclass(frozen=True)
class TiledWeight:
    """A QuantWeight repacked for the tiled kernel (kernels/quant_vnni.cpp, quant_avx2.h): 16 output channels per tile,
    each 64-byte vector 16 lanes x 4 bytes of one output each; runs of TILE_RUN tiles store their steps
    interleaved (one sequential stream per run); N padded to 16 x TILE_RUN with zero scales."""
    data: torch.Tensor            # uint8 [T/4, Kp/4, 4, 16, 4] (int8, codes + 128) or [T/4, Kp/8, 4, 16, 4] (int4)
    scale: torch.Tensor           # fp32 [N/16 * 16] (int8) or [N/16, Kp / group_size, 16] (int4)
    mins: torch.Tensor | None     # fp32 like scale (int4)


def _pad_rows(t: torch.Tensor, rows: int, value: int = 0) -> torch.Tensor:
    if rows == t.shape[0]:
        return t
    return torch.cat([t, torch.full((rows - t.shape[0], *t.shape[1:]), value, dtype=t.dtype, device=t.device)])


TILE_RUN = 4   # tiles whose steps are interleaved (the kernel's work item, kTiles)


def _interleave(data: torch.Tensor) -> torch.Tensor:
    """[T, S, 16, 4] -> runs of TILE_RUN tiles, each run's steps interleaved: [T / TILE_RUN, S, TILE_RUN, 16, 4]."""
    t, s = data.shape[:2]
    return data.view(t // TILE_RUN, TILE_RUN, s, 16, 4).transpose(1, 2)


def tile(w: QuantWeight) -> TiledWeight:
    """`w` in the tiled kernel's layout (see TiledWeight)."""
    n, kp = w.out_features, w.padded_in_features
    tiles = -(-n // (16 * TILE_RUN)) * TILE_RUN
    if w.bits == 8:
        codes = _pad_rows((w.data.to(torch.int16) + 128).to(torch.uint8), tiles * 16, 128)     # [Np, Kp]
        data = codes.view(tiles, 16, kp // 4, 4).permute(0, 2, 1, 3)                            # [T, Kp/4, 16, 4]
        return TiledWeight(_interleave(data).contiguous().view(-1), _pad_rows(w.scale, tiles * 16).contiguous(), None)
    q = _pad_rows(unpack_int4(w.data), tiles * 16).view(tiles, 16, kp // 8, 2, 4)              # k = 8s + 4h + b
    data = (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).permute(0, 2, 1, 3)                          # [T, Kp/8, 16, 4]
    groups = kp // w.group_size

    def per_tile(t: torch.Tensor) -> torch.Tensor:   # [N, G] -> [T, G, 16]
        return _pad_rows(t, tiles * 16).view(tiles, 16, groups).transpose(1, 2).contiguous()

    return TiledWeight(_interleave(data).contiguous().view(-1), per_tile(w.scale), per_tile(w.mins))


def quantize(w: torch.Tensor, mode: str, group_size: int) -> QuantWeight:
    if mode == "int8":
        return quantize_int8(w)
    if mode == "int4":
        return quantize_int4(w, group_size)
    raise InvalidArgument(f"quantization must be 'int8' or 'int4' here, got {mode!r}")
