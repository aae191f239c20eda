"""The paged KV cache bookkeeping: blocks sized from a byte budget, prefix cache.

The KV tensors themselves belong to the model runner (`flint.engine.runner`:
[layers, num_slots, kv_heads, head_dim] in this process, or a slice of them
on each shard worker); slot = block * block_size + offset. A request's `slots` tensor maps each of its token
positions to a slot: first the slots of its cached prefix (wherever the radix
tree keeps them), then the slots of blocks it allocated at admission for the
rest of its prompt, its output and the speculative lookahead. Allocating the
whole need at admission means a running request never runs out of KV mid
decode, so the scheduler needs no preemption; the price is reserving
`max_tokens` per request, which the byte budget sizes for.
"""

from __future__ import annotations

import math

import torch

from flint.engine.block_allocator import BlockAllocator
from flint.engine.radix_cache import RadixCache
from flint.engine.request import Request


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

    def admit(self, req: Request) -> bool:
        """Match the cached prefix and allocate blocks for the rest; False if KV is short right now."""
        match = None
        if self.radix is not None:
            # The last prompt token is always computed: its logits start the output.
            match = self.radix.match(req.namespace, req.prompt_ids[: req.prompt_len - 1])
            self.radix.lock(match.node)
        cached = match.length if match is not None else 0
        need = self.blocks_for(req.capacity - cached)
        if self.allocator.num_free < need and self.radix is not None:
            self.radix.evict(need)
        if self.allocator.num_free < need:
            if match is not None:
                self.radix.unlock(match.node)
            return False
        owned = self.allocator.allocate(need)
        fresh = (torch.from_numpy(owned)[:, None] * self.block_size + self._offsets).flatten()
        req.slots = torch.cat([match.slots, fresh]) if cached else fresh    # [>= capacity]
        req.owned_blocks = owned
        req.cache_node = match.node if match is not None else None
        req.num_computed = req.num_cached_prompt = cached
        return True

    def release(self, req: Request) -> None:
        """Give back a request's blocks; its computed tokens stay in the prefix cache."""
        if req.owned_blocks is None:
            return
        if self.radix is not None:
            n = req.num_computed
            if n > 0:
                self.radix.insert(req.namespace, req.tokens[:n], req.slots[:n])
            self.radix.unlock(req.cache_node)
        self.allocator.decref(req.owned_blocks)
        req.owned_blocks, req.cache_node, req.slots = None, None, None

    def all_free_after_clearing(self) -> bool:
        """Leak check for tests: with no request running, clearing the prefix cache frees every block."""
        if self.radix is not None:
            self.radix.clear()
        refs = [self.allocator.refcount(b) for b in range(self.num_blocks)]
        return self.allocator.num_free == self.num_blocks and not any(refs)
