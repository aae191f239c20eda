"""Write a GPTQ int4 checkpoint (AutoGPTQ layout, checkpoint_format "gptq") from a full-precision HF one.

Round-to-nearest, asymmetric, per group of `group_size` input columns, packed exactly as GPTQ stores it:
qweight int32 [K/8, N] (8 codes along K per word), qzeros int32 [K/G, N/8] (zero points minus 1, 8 along N
per word), scales fp16 [K/G, N], g_idx int32 [K]. With `act_order`, columns are grouped by a permutation
(g_idx not sorted), as GPTQ's desc_act writes them. Also writes the dequantized weights as a plain fp32
checkpoint: the reference the loaded GPTQ model must reproduce.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def pack_rows(codes: torch.Tensor) -> torch.Tensor:
    """uint8 [R * 8, C] -> int32 [R, C], code j of a word in bits 4j..4j+3."""
    r8, c = codes.shape
    words = codes.to(torch.int64).view(r8 // 8, 8, c) << (torch.arange(8) * 4)[None, :, None]
    return ((words.sum(dim=1) + 2**31) % 2**32 - 2**31).to(torch.int32)   # the same 32 bits, as int32


def quantize_linear(w: torch.Tensor, group_size: int, act_order: bool, seed: int):
    """w [N, K] -> (tensors in GPTQ layout, dequantized fp32 w)."""
    n, k = w.shape
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(seed)) if act_order else torch.arange(k)
    g_idx = torch.empty(k, dtype=torch.int32)
    g_idx[perm] = (torch.arange(k) // group_size).to(torch.int32)          # column perm[i] is in group i // G
    groups = k // group_size
    wt = w.T.float()                                                        # [K, N]
    scales, zeros = torch.empty(groups, n), torch.empty(groups, n)
    for g in range(groups):
        cols = wt[g_idx == g]
        lo, hi = cols.amin(0).clamp(max=0), cols.amax(0).clamp(min=0)
        scales[g] = ((hi - lo) / 15).clamp(min=1e-8)
        zeros[g] = torch.round(-lo / scales[g]).clamp(0, 15)
    scales = scales.half().float()                                          # stored as fp16
    q = torch.clamp(torch.round(wt / scales[g_idx.long()]) + zeros[g_idx.long()], 0, 15).to(torch.uint8)
    dequant = (scales[g_idx.long()] * (q.float() - zeros[g_idx.long()])).T.contiguous()
    tensors = {
        "qweight": pack_rows(q),
        "qzeros": pack_rows((zeros - 1).to(torch.uint8).T.contiguous()).T.contiguous(),
        "scales": scales.half(),
        "g_idx": g_idx,
    }
    return tensors, dequant


def write_gptq(src: Path, dst: Path, reference: Path, group_size: int, act_order: bool = False) -> None:
    tensors = load_file(str(src / "model.safetensors"))
    gptq, ref = {}, {}
    for i, (name, t) in enumerate(sorted(tensors.items())):
        prefix = name.removesuffix(".weight")
        if name.endswith(".weight") and prefix.rsplit(".", 1)[-1] in LINEARS:
            packed, dequant = quantize_linear(t, group_size, act_order, seed=i)
            gptq.update({f"{prefix}.{k}": v for k, v in packed.items()})
            ref[name] = dequant
        else:
            gptq[name] = t.half()      # GPTQ checkpoints keep the rest in fp16
            ref[name] = t.half().float()
    for out, weights in ((dst, gptq), (reference, ref)):
        out.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, out / f.name)
        save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": group_size,
                                     "desc_act": act_order, "sym": False, "checkpoint_format": "gptq"}
    (dst / "config.json").write_text(json.dumps(config, indent=2))
