"""Blocks come out of the allocator in ascending address order, so a sequence's KV is one forward stream.

The paged attention kernel reads a sequence's keys and values in slot-map order; the hardware prefetcher
streams forward only, and a map whose blocks run downwards (what the free stack handed out before) cost the
1-token step at 131,072 cached tokens ~15% more (flint.bench.attention, same run).
"""

import numpy as np

from flint.engine.block_allocator import BlockAllocator


def test_a_fresh_allocator_hands_out_ascending_blocks_across_allocations():
    alloc = BlockAllocator(64, 16)
    first, second = alloc.allocate(8), alloc.allocate(5)
    assert first.tolist() == list(range(8))
    assert second.tolist() == list(range(8, 13))


def test_blocks_reused_after_a_free_come_in_ascending_order():
    alloc = BlockAllocator(64, 16)
    held = alloc.allocate(40)
    alloc.decref(held[[30, 3, 21, 7, 12]])
    again = alloc.allocate(7)                                  # the five freed ones, then two never used
    assert np.all(np.diff(again) > 0), again.tolist()
    assert set(again.tolist()) >= {3, 7, 12, 21, 30}
