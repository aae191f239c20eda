"""Model weights in transparent huge pages (2 MiB) on CPU.

A decode step streams every weight once. From 4 KiB pages that stream crosses a page every 4 KiB: a TLB
miss each time, and the hardware prefetchers stop at every page boundary. Weights loaded from safetensors
or made by torch ops sit in 4 KiB pages (Linux's transparent huge pages are "madvise" on most distributions,
and torch's allocator does not ask for them). So after loading, the engine copies its large weight tensors
into one anonymous mapping advised MADV_HUGEPAGE (`move_weights`): a decode step of the fp32 benchmark
model (83 MB) took 0.65-0.86x the time of the same engine without the move, in same-process interleaved
runs on the 2-core EPYC (README: Engine).

Where the kernel gives no huge pages (THP "never", not Linux), the copies still work and cost nothing
beyond the copy; `FLINT_HUGE_PAGES=0` keeps the weights where they were loaded.
"""

from __future__ import annotations

import logging
import mmap
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

HUGE_PAGE_BYTES = 2 << 20
MIN_TENSOR_BYTES = 256 << 10    # smaller tensors stay put: they are read from cache, not streamed
_ALIGN = 4096                   # each tensor starts on its own 4 KiB boundary inside the mapping
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def available() -> bool:
    """True when this kernel can back an madvise'd anonymous mapping with huge pages."""
    if not hasattr(mmap, "MADV_HUGEPAGE") or os.environ.get("FLINT_HUGE_PAGES", "1") == "0":
        return False
    try:
        return "[never]" not in _THP.read_text()
    except OSError:
        return False


def copy_to_huge_pages(tensors: list[torch.Tensor],
                       placed: Callable[[int, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
    """Contiguous copies of `tensors` (CPU) in one mapping advised MADV_HUGEPAGE, in order; `placed(i, copy)`
    is called as each copy is made (so the caller can let the original go before the next one is copied).
    The mapping lives as long as any of the copies (each holds the buffer it views)."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    offsets, total = [], 0
    for size in sizes:
        offsets.append(total)
        total += -(-size // _ALIGN) * _ALIGN
    length = -(-total // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES + HUGE_PAGE_BYTES   # room to align the start
    region = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region.madvise(mmap.MADV_HUGEPAGE)
    raw = torch.frombuffer(region, dtype=torch.uint8)
    start = -raw.data_ptr() % HUGE_PAGE_BYTES
    copies = []
    for i, (size, offset) in enumerate(zip(sizes, offsets)):
        t = tensors[i]
        copy = raw[start + offset: start + offset + size].view(t.dtype).view(t.shape)
        copy.copy_(t)
        del t
        if placed is not None:
            placed(i, copy)
        copies.append(copy)
    return copies


def move_weights(model: nn.Module) -> int:
    """Move `model`'s large CPU parameters, buffers and quantized tiles into huge pages (tied tensors stay
    tied); returns the bytes moved (0 when huge pages are not available)."""
    if not available():
        return 0
    from flint.engine.quant.modules import QuantLinear

    slots: list[tuple[object, str, torch.Tensor]] = []   # (owner, attribute, tensor)
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            slots.append((module, name, tensor))
        if isinstance(module, QuantLinear) and module._tiled is not None:
            for name in ("data", "scale", "mins"):
                tensor = getattr(module._tiled, name)
                if tensor is not None:
                    slots.append((module._tiled, name, tensor))
    groups: dict[int, list[tuple[object, str, torch.Tensor]]] = {}   # one tensor (tied ones too) -> its slots
    for slot in slots:
        tensor = slot[2]
        if (tensor.device.type == "cpu" and tensor.is_contiguous() and not tensor.is_sparse
                and tensor.numel() * tensor.element_size() >= MIN_TENSOR_BYTES):
            groups.setdefault(tensor.data_ptr(), []).append(slot)
    del slots
    if not groups:
        return 0
    keys = list(groups)
    originals = [groups[k][0][2] for k in keys]
    nbytes = sum(t.numel() * t.element_size() for t in originals)

    def place(i: int, copy: torch.Tensor) -> None:   # swap the copy in at once: at most one extra tensor alive
        originals[i] = None
        for owner, name, tensor in groups.pop(keys[i]):
            if copy.shape != tensor.shape or copy.dtype != tensor.dtype:
                continue
            if isinstance(tensor, nn.Parameter):
                tensor.data = copy
            elif isinstance(owner, nn.Module):
                setattr(owner, name, copy)
            else:
                object.__setattr__(owner, name, copy)

    copy_to_huge_pages(originals, place)
    for module in model.modules():   # the kernels' bound objects hold the tensors they were made with
        if isinstance(module, QuantLinear) and module._op is not None:
            module.rebind()
    log.info("weights: %.1f MB in transparent huge pages", nbytes / 1e6)
    return nbytes
