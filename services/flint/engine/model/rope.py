"""Rotary position embeddings with explicit per-token positions.

Positions come with each token (not implied by a batch layout), so packed
batches, chunked prefill and speculative verification all use the same path.
The rotation is computed once per forward pass and shared by every layer; the
frequencies follow the HF definitions for "default", "linear" and "llama3".

Layout: HF rotates pairs (i, i + D/2) of each head ("rotate_half"). flint's
loader permutes the q/k rows of every head to (0, D/2, 1, D/2 + 1, ...)
(`interleave_rows`), so pairs are adjacent and the rotation is ONE complex
multiply per step instead of seven elementwise kernels. Attention scores are
unchanged because q and k are permuted alike; v is not touched.
"""

from __future__ import annotations

import math

import torch

from flint.engine.model.config import ModelConfig


def inverse_frequencies(config: ModelConfig, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 [head_dim // 2] rotation speeds, after rope scaling."""
    dim = config.head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    inv_freq = 1.0 / (config.rope_theta**exponents)  # [D/2]
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.type == "linear":
        return inv_freq / scaling.factor
    if scaling.type == "yarn":
        return _yarn(inv_freq, dim, config.rope_theta, scaling)
    # llama3: keep fast rotations, slow down long wavelengths by `factor`, blend in between.
    old_len = scaling.original_max_position_embeddings
    low_wavelen = old_len / scaling.low_freq_factor
    high_wavelen = old_len / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, scaled)


def interleave_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """q/k weight rows (or bias) [H * D, ...] from HF half-split to flint's interleaved pair order."""
    half = head_dim // 2
    perm = torch.stack((torch.arange(half), torch.arange(half) + half), dim=-1).flatten()  # [D]
    heads = w.shape[0] // head_dim
    return w.reshape(heads, head_dim, *w.shape[1:])[:, perm].reshape(w.shape)


def _yarn(inv_freq: torch.Tensor, dim: int, base: float, s) -> torch.Tensor:
    """YaRN: interpolate (divide by factor) the slow dimensions, keep the fast ones, ramp in between."""

    def dim_for(rotations: float) -> float:  # the dimension that turns `rotations` times over the old context
        return dim * math.log(s.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_for(s.beta_fast), dim_for(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device=inv_freq.device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp                                    # 1 = extrapolate (original frequency)
    return inv_freq / s.factor * (1 - keep) + inv_freq * keep


class Rotary:
    """Holds the frequencies; `rotation(positions)` gives the per-token rotation for `apply_rotary`."""

    def __init__(self, config: ModelConfig, device: torch.device | str, dtype: torch.dtype):
        self.inv_freq = inverse_frequencies(config, device)  # [D/2] float32
        self.dtype = dtype
        scaling = config.rope_scaling
        self.magnitude = scaling.attention_factor if scaling is not None else 1.0  # YaRN scales cos and sin
        self._magnitudes = torch.full_like(self.inv_freq, self.magnitude)           # [D/2] for torch.polar
        self._kernel = False                                                         # not looked up yet

    def _native(self):
        """The native kernel module (paged attention's) for CPU float32 frequencies, or None."""
        if self._kernel is False:
            from flint.engine.paged_attention import native_kernel

            self._kernel = native_kernel() if self.inv_freq.device.type == "cpu" else None
        return self._kernel

    def rotation(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [T] -> (cos, sin) pairs [T, 1, D/2, 2] in the model dtype (scaled by YaRN's factor).

        On the CPU one native call (kernels/paged_attention.cpp `rope_table`, ~35 us less per decode step
        than the ops below); elsewhere eager uses one `torch.polar` kernel for cos and sin together, and
        compiled graphs cos, sin and stack (inductor does not generate code for complex ops).
        """
        if not torch.compiler.is_compiling() and self._native() is not None and positions.device.type == "cpu":
            table = self._native().rope_table(positions.contiguous(), self.inv_freq, self.magnitude)  # one call
            return table if self.dtype == torch.float32 else table.to(self.dtype)
        angles = positions.to(torch.float32)[:, None, None] * self.inv_freq   # [T, 1, D/2]
        if not torch.compiler.is_compiling():
            pairs = torch.view_as_real(torch.polar(self._magnitudes.expand_as(angles), angles))
            return pairs if self.dtype == torch.float32 else pairs.to(self.dtype)
        pairs = torch.stack((angles.cos(), angles.sin()), dim=-1)             # [T, 1, D/2, 2]
        return (pairs * self.magnitude if self.magnitude != 1.0 else pairs).to(self.dtype)


def apply_rotary(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """x [T, H, D] (interleaved pairs) rotated by `Rotary.rotation` -> new contiguous [T, H, D].

    Eager float32 uses one complex multiply; other dtypes and torch.compile (inductor does not
    generate code for complex ops) use the real formula, which inductor fuses into one kernel.
    """
    t, h, d = x.shape
    pairs = x.unflatten(-1, (d // 2, 2))                                  # [T, H, D/2, 2]
    if x.dtype == torch.float32 and not torch.compiler.is_compiling():
        return torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotation)).view(t, h, d)
    x1, x2 = pairs[..., 0], pairs[..., 1]
    cos, sin = rotation[..., 0], rotation[..., 1]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).view(t, h, d)
