"""The paged KV cache bookkeeping: blocks sized from a byte budget, prefix cache.

The KV tensors themselves belong to the model runner (`flint.engine.runner`:
[layers, num_slots, kv_heads, head_dim] in this process, or a slice of them
on each shard worker); slot = block * block_size + offset. A request's `slots` tensor maps each of its token
positions to a slot: first the slots of its cached prefix (wherever the radix
tree keeps them), then the slots of blocks it allocated at admission for the
rest of its prompt. Decode room is allocated on demand (`grow`), never
reserved for `max_tokens` up front; when a grow cannot be met the scheduler
preempts (flint.engine.scheduler).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict

import numpy as np
import torch

from flint.engine.block_allocator import BlockAllocator
from flint.engine.radix_cache import Hint, RadixCache
from flint.engine.request import Request

_NO_BLOCKS = np.empty(0, dtype=np.int64)
# Sessions whose match hint is kept; each holds its last request's token and slot buffers
# (16 bytes per token: 2 MB at 131,072 tokens).
MAX_SESSION_HINTS = 64


HINT_KEY_TOKENS = 256


def _hint_key(req: Request) -> str:
    """The session id, or without one the prompt's first tokens (a document's prompt starts the same
    keystroke after keystroke). A wrong guess costs one failed comparison: hints are always verified."""
    if req.session_id:
        return f"{req.namespace}\x00s\x00{req.session_id}"
    head = req.tokens[: min(HINT_KEY_TOKENS, req.num_tokens)].tobytes()
    return f"{req.namespace}\x00t\x00{hashlib.blake2b(head, digest_size=16).hexdigest()}"


def kv_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * num_layers * num_kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()


class PagedKVCache:
    def __init__(
        self,
        *,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        budget_bytes: int,
        block_size: int,
        prefix_cache: bool = True,
    ):
        self.block_size = block_size
        self.bytes_per_token = kv_bytes_per_token(num_layers, num_kv_heads, head_dim, dtype)
        num_blocks = budget_bytes // (self.bytes_per_token * block_size)
        if num_blocks < 1:
            from flint.errors import InvalidArgument

            raise InvalidArgument(
                f"kv_cache_bytes={budget_bytes} holds no block of {block_size} tokens at "
                f"{self.bytes_per_token} bytes/token; raise kv_cache_bytes to at least {self.bytes_per_token * block_size}"
            )
        self.allocator = BlockAllocator(num_blocks, block_size)
        self.radix = RadixCache(self.allocator) if prefix_cache else None
        # Per session: where its last request ended in the prefix cache (radix_cache.Hint), newest last.
        self._hints: OrderedDict[str, Hint] = OrderedDict()
        self._offsets = torch.arange(block_size, dtype=torch.int64)

    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.allocator.num_slots

    @property
    def bytes_total(self) -> int:
        return self.num_blocks * self.block_size * self.bytes_per_token

    def sequences_that_fit(self, tokens: int) -> int:
        return self.num_blocks // self.blocks_for(tokens)

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def used_fraction(self) -> float:
        """Blocks allocated, prefix-cache entries included (the `kv_cache_usage_ratio` gauge)."""
        return self.allocator.num_used / self.num_blocks

    def active_fraction(self, requests) -> float:
        """Blocks that `requests` hold (their own plus the cached prefix they read), as a fraction.

        This is the KV load admission control and autoscaling read: unlocked prefix-cache entries are
        evicted on demand, so counting them would make an idle replica with a warm cache look full.
        O(len(requests)), nothing per token or per cache entry.
        """
        held = sum(len(r.owned_blocks) + self.blocks_for(r.num_cached_prompt)
                   for r in requests if r.owned_blocks is not None)
        return min(1.0, held / self.num_blocks)

    def match(self, req: Request):
        """Lock the longest cached prefix of what `req` must compute (all but its last token), or None."""
        if self.radix is None:
            return None
        # The last token is always computed: its logits give the next token.
        hint = self._hints.get(_hint_key(req))
        match = self.radix.match(req.namespace, req.tokens[: req.num_tokens - 1], hint)
        self.radix.lock(match.node)
        return match

    def unmatch(self, match) -> None:
        if match is not None:
            self.radix.unlock(match.node)

    def blocks_to_admit(self, req: Request, match, positions: int) -> int:
        cached = match.length if match is not None else 0
        return self.blocks_for(positions - cached)

    def admit(self, req: Request, match, positions: int) -> bool:
        """Give `req` the matched prefix and fresh blocks up to `positions`; False (match released) if short.

        The slot map is one preallocated [capacity] tensor: the cached prefix's slots are copied in
        once (one memcpy, no per-token work), later growth only writes the new blocks' slots.
        """
        need = self.blocks_to_admit(req, match, positions)
        if not self.reserve(need):
            self.unmatch(match)
            return False
        cached = match.length if match is not None else 0
        req.slots = torch.empty(req.capacity, dtype=torch.int64)
        if cached:
            match.copy_slots_into(req.slots[:cached])
        req.num_slots = cached
        req.owned_blocks = _NO_BLOCKS
        req.cache_node = match.node if match is not None else None
        req.cache_depth = req.num_computed = cached
        self._append_blocks(req, need)
        return True

    def grow(self, req: Request, positions: int, *, evict: bool = True) -> bool:
        """Make sure `req` has slots for its first `positions` token positions; False if KV is short.

        `evict=False` takes only free blocks (room ahead of need is not worth the prefix cache)."""
        positions = min(positions, req.capacity)
        if req.num_slots >= positions:
            return True
        need = self.blocks_for(positions - req.num_slots)
        if not (self.reserve(need) if evict else self.allocator.num_free >= need):
            return False
        self._append_blocks(req, need)
        req.slots_grew = True
        return True

    def reserve(self, blocks: int) -> bool:
        """True if `blocks` blocks are free, evicting unlocked prefix-cache entries to get there."""
        if self.allocator.num_free < blocks and self.radix is not None:
            self.radix.evict(blocks)
        return self.allocator.num_free >= blocks

    def reclaimable_blocks(self) -> int:
        """Free blocks plus what evicting the whole unlocked prefix cache would free, at most."""
        evictable = self.blocks_for(self.radix.evictable_tokens()) if self.radix is not None else 0
        return self.allocator.num_free + evictable

    def _append_blocks(self, req: Request, n: int) -> None:
        if n == 0:
            return
        owned = self.allocator.allocate(n)
        fresh = (torch.from_numpy(owned)[:, None] * self.block_size + self._offsets).flatten()   # [n * block]
        room = min(len(fresh), req.capacity - req.num_slots)
        req.slots[req.num_slots : req.num_slots + room] = fresh[:room]
        req.num_slots += room
        req.owned_blocks = np.concatenate([req.owned_blocks, owned])

    def release(self, req: Request) -> None:
        """Give back a request's blocks; its computed tokens stay in the prefix cache."""
        if req.owned_blocks is None:
            return
        if self.radix is not None:
            n = req.num_computed
            if n > req.cache_depth:
                new, end = self.radix.insert_from(req.cache_node, req.cache_depth, req.tokens[:n], req.slots[:n])
                if new == n - req.cache_depth:                      # the tree holds exactly req.slots[:n]
                    self._remember(_hint_key(req), Hint(end, n, req.tokens, req.slots))
            self.radix.unlock(req.cache_node)
        self.allocator.decref(req.owned_blocks)
        req.owned_blocks, req.cache_node, req.slots, req.num_slots = None, None, None, 0

    def _remember(self, key: str, hint: Hint) -> None:
        self._hints[key] = hint
        self._hints.move_to_end(key)
        while len(self._hints) > MAX_SESSION_HINTS:
            self._hints.popitem(last=False)

    def all_free_after_clearing(self) -> bool:
        """Leak check for tests: with no request running, clearing the prefix cache frees every block."""
        if self.radix is not None:
            self.radix.clear()
        refs = [self.allocator.refcount(b) for b in range(self.num_blocks)]
        return self.allocator.num_free == self.num_blocks and not any(refs)
