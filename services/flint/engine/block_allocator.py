"""Block allocator of the paged KV cache.

The cache is a pool of `num_blocks` blocks of `block_size` token slots
(slot = block * block_size + offset). A block is free when nobody holds it.
Holders count references:
- a running request holds 1 reference on each block it allocated for its own
  new tokens;
- the radix prefix cache holds 1 reference per token slot it keeps in a block.

So a block whose tokens moved into the prefix cache outlives the request, and
a partly cached block is freed when its last cached token is evicted.
Reference counts live in a numpy array so that a whole request's blocks are
updated in one vectorised call, never per token in Python.
"""

from __future__ import annotations

import numpy as np
import torch

from flint.errors import Internal


class BlockAllocator:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise Internal(f"allocator needs >= 1 block of >= 1 slot, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self._refs = np.zeros(num_blocks, dtype=np.int64)
        # Stack of free block ids; low ids on top so tests and dumps read naturally.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    def allocate(self, n: int) -> np.ndarray:
        """Take `n` free blocks (1 reference each); the caller checked `num_free`."""
        if n > len(self._free):
            raise Internal(f"allocate({n}) with only {len(self._free)} free blocks")
        if n == 0:
            return np.empty(0, dtype=np.int64)
        # Ascending, whatever order the stack holds them in: a sequence's KV is then read as a forward
        # stream, which the hardware prefetcher follows (tests/engine/test_block_order.py).
        blocks = np.sort(np.array(self._free[-n:], dtype=np.int64))
        del self._free[-n:]
        self._refs[blocks] = 1
        return blocks

    def incref(self, blocks: np.ndarray, counts: np.ndarray | int = 1) -> None:
        np.add.at(self._refs, blocks, counts)

    def decref(self, blocks: np.ndarray, counts: np.ndarray | int = 1) -> None:
        """Drop references; blocks reaching zero return to the free list."""
        if len(blocks) == 0:
            return
        np.subtract.at(self._refs, blocks, counts)
        touched = np.unique(blocks)
        refs = self._refs[touched]
        if (refs < 0).any():
            raise Internal(f"block reference count below zero for blocks {touched[refs < 0].tolist()}")
        self._free.extend(touched[refs == 0].tolist())

    def incref_slots(self, slots: torch.Tensor) -> None:
        """One reference per slot, on the slot's block (the prefix cache keeping tokens)."""
        blocks, counts = self._blocks_of(slots)
        self.incref(blocks, counts)

    def decref_slots(self, slots: torch.Tensor) -> None:
        blocks, counts = self._blocks_of(slots)
        self.decref(blocks, counts)

    def refcount(self, block: int) -> int:
        return int(self._refs[block])

    def _blocks_of(self, slots: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        blocks = (slots // self.block_size).numpy()
        return np.unique(blocks, return_counts=True)
