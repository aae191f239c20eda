"""Rotary layout: flint's interleaved q/k rows rotated by complex multiply == HF's rotate_half on HF rows."""

from __future__ import annotations

import torch

from flint.engine.model.rope import apply_rotary, interleave_rows


def hf_rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The HF formula: x * [cos, cos] + rotate_half(x) * [sin, sin] (pairs (i, i + D/2))."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * torch.cat((cos, cos), -1) + rotated * torch.cat((sin, sin), -1)


def test_interleaved_rotation_equals_hf_rotation_on_permuted_rows():
    g = torch.Generator().manual_seed(0)
    t, h, d = 5, 3, 8
    x_hf = torch.randn(t, h, d, generator=g, dtype=torch.float64)
    angles = torch.randn(t, 1, d // 2, generator=g, dtype=torch.float64)
    expected = hf_rotate_half(x_hf, angles.cos(), angles.sin())                    # [T, H, D] HF layout
    x_fl = interleave_rows(x_hf.permute(1, 2, 0).reshape(h * d, t), d).reshape(h, d, t).permute(2, 0, 1)
    expected_fl = interleave_rows(expected.permute(1, 2, 0).reshape(h * d, t), d).reshape(h, d, t).permute(2, 0, 1)
    rotation = torch.stack((angles.cos(), angles.sin()), dim=-1)                   # [T, 1, D/2, 2]
    complex_path = apply_rotary(x_fl.float().contiguous(), rotation.float())       # eager float32: complex
    real_path = apply_rotary(x_fl.contiguous(), rotation)                          # float64: real formula
    torch.testing.assert_close(real_path, expected_fl)
    torch.testing.assert_close(complex_path, expected_fl.float())
