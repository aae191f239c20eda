"""Radix prefix cache: insert / match / evict / refcounts, example-based and property-based."""

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from flint.engine.block_allocator import BlockAllocator
from flint.engine.radix_cache import RadixCache

BS = 4


def _alloc_slots(alloc: BlockAllocator, n: int) -> tuple[np.ndarray, torch.Tensor]:
    blocks = alloc.allocate(-(-n // BS))
    slots = (torch.from_numpy(blocks)[:, None] * BS + torch.arange(BS)).flatten()[:n]
    return blocks, slots


def _cache(num_blocks=64):
    alloc = BlockAllocator(num_blocks, BS)
    return alloc, RadixCache(alloc)


def test_match_is_token_granular_and_splits_mid_edge():
    alloc, cache = _cache()
    blocks, slots = _alloc_slots(alloc, 10)
    assert cache.insert("m", np.arange(10), slots) == 10
    alloc.decref(blocks)                         # the request is gone; the cache keeps the tokens
    m = cache.match("m", np.array([0, 1, 2, 3, 4, 5, 99]))
    assert m.length == 6                         # not rounded down to a block boundary
    assert m.slots.tolist() == slots[:6].tolist()
    assert cache.match("m", np.arange(10)).length == 10   # the split edge still matches end to end


def test_namespaces_do_not_share():
    alloc, cache = _cache()
    blocks, slots = _alloc_slots(alloc, 8)
    cache.insert("model\x00tenant-a", np.arange(8), slots)
    assert cache.match("model\x00tenant-b", np.arange(8)).length == 0
    assert cache.match("model\x00tenant-a", np.arange(8)).length == 8
    alloc.decref(blocks)
    cache.clear()
    assert alloc.num_free == alloc.num_blocks


def test_insert_of_cached_tokens_adds_nothing_and_keeps_first_slots():
    alloc, cache = _cache()
    b1, s1 = _alloc_slots(alloc, 6)
    b2, s2 = _alloc_slots(alloc, 9)
    assert cache.insert("m", np.arange(6), s1) == 6
    assert cache.insert("m", np.arange(9), s2) == 3     # only the 3 new tokens
    alloc.decref(b1)
    alloc.decref(b2)
    m = cache.match("m", np.arange(9))
    assert m.slots[:6].tolist() == s1.tolist() and m.slots[6:].tolist() == s2[6:].tolist()
    assert cache.cached_tokens == 9
    cache.clear()
    assert alloc.num_free == alloc.num_blocks


def test_locked_prefix_survives_eviction_and_lru_goes_first():
    alloc, cache = _cache(num_blocks=6)
    old_b, old_s = _alloc_slots(alloc, 8)                # 2 blocks
    new_b, new_s = _alloc_slots(alloc, 8)                # 2 blocks
    cache.insert("m", np.arange(8), old_s)
    cache.insert("m", np.arange(100, 108), new_s)
    alloc.decref(old_b)
    alloc.decref(new_b)
    cache.match("m", np.arange(100, 108))                # touch: now the most recent
    assert alloc.num_free == 2
    cache.evict(4)
    assert cache.match("m", np.arange(8)).length == 0    # LRU entry evicted
    locked = cache.match("m", np.arange(100, 108))
    cache.lock(locked.node)
    cache.evict(6)                                       # cannot free the locked path
    assert cache.match("m", np.arange(100, 108)).length == 8
    cache.unlock(locked.node)
    cache.clear()
    assert alloc.num_free == alloc.num_blocks


def test_partly_cached_block_is_freed_by_its_last_token():
    alloc, cache = _cache(num_blocks=4)
    blocks, slots = _alloc_slots(alloc, 6)               # blocks: 4 + 2 tokens
    cache.insert("m", np.arange(6), slots)
    cache.insert("m", np.array([0, 1, 2, 3, 4, 5]), slots)
    cache.match("m", np.array([0, 1, 2, 3, 77]))         # split after 4 tokens
    alloc.decref(blocks)
    assert alloc.num_free == 2
    cache.evict(3)                                        # evicts the 2-token leaf: second block freed
    assert alloc.num_free == 3
    assert cache.match("m", np.arange(6)).length == 4


sequences = st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=12), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(seqs=sequences, probes=sequences, evict_to=st.integers(0, 64))
def test_property_cache_matches_a_reference_and_never_leaks(seqs, probes, evict_to):
    alloc, cache = _cache(num_blocks=64)
    reference: dict[tuple, int] = {}                     # token prefix -> slot of its last token
    for seq in seqs:
        m = cache.match("m", np.array(seq))
        blocks, fresh = _alloc_slots(alloc, len(seq) - m.length)
        slots = torch.cat([m.slots, fresh])
        cache.insert("m", np.array(seq), slots)
        alloc.decref(blocks)
        for i in range(1, len(seq) + 1):
            reference.setdefault(tuple(seq[:i]), int(slots[i - 1]))
    for probe in probes:
        m = cache.match("m", np.array(probe))
        longest = max((i for i in range(len(probe) + 1) if i == 0 or tuple(probe[:i]) in reference), default=0)
        assert m.length == longest
        for i in range(m.length):                        # the cache hands out the slots first stored
            assert int(m.slots[i]) == reference[tuple(probe[: i + 1])]
    cache.evict(evict_to)
    # Every block still used is used by a cached token; clearing frees everything.
    assert cache.cached_tokens >= 0
    cache.clear()
    assert cache.cached_tokens == 0
    assert alloc.num_free == alloc.num_blocks
    assert all(alloc.refcount(b) == 0 for b in range(alloc.num_blocks))
