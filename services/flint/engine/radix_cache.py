"""Radix-tree prefix cache at token granularity.

Every edge holds a run of token ids and the KV slots where those tokens' keys
and values live. A request whose prompt starts with a cached run reuses those
slots and prefills only the rest, whatever the block boundaries: slots are
addressed per token, so a match may end mid-block and the request's own new
tokens go to fresh blocks (no copy-on-write needed).

- Namespaces: one tree per namespace string (the engine uses model name +
  tenant `cache_namespace`), so tenants never share KV.
- Reference counts: `lock(node)` pins the path root..node while a request
  reads it. Only leaves are evicted and a locked node's ancestors are never
  leaves, so the count lives on the node alone: lock and unlock are O(1),
  not a walk to the root.
- LRU: every match/insert stamps the path with a logical clock; eviction takes
  the least recently used unlocked leaf first until enough blocks are free.
- Ownership: the tree holds one allocator reference per token slot it keeps
  (see `BlockAllocator`), so blocks are freed exactly when their last cached
  token is evicted.

Matching walks the tree once per request admission, never per decode step:
one Python iteration per edge on the path (not per token) and one vectorised
comparison of the prompt against the edges' keys; the matched slots are
copied once, straight into the request's slot map (`Match.copy_slots_into`).
A session continuing its own document passes a `Hint` (where its previous
request's tokens ended in the tree, with that request's token and slot
buffers): if the new prompt starts with those tokens (one vectorised
comparison) the walk starts there, so its Python work is proportional to the
new tokens' edges, not to the session's history of edits. Inserting a
finished request starts at the node it matched (`insert_from`).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from flint.engine.block_allocator import BlockAllocator
from flint.errors import Internal

_EMPTY_KEY = np.empty(0, dtype=np.int64)
_EMPTY_SLOTS = torch.empty(0, dtype=torch.int64)


class Node:
    __slots__ = ("key", "slots", "children", "parent", "lock", "last_access")

    def __init__(self, key: np.ndarray, slots: torch.Tensor, parent: "Node | None"):
        self.key = key                      # [n] int64 token ids on the edge from parent
        self.slots = slots                  # [n] int64 KV slots of those tokens
        self.children: dict[int, Node] = {}
        self.parent = parent
        self.lock = 0                       # requests reading this node (or a descendant)
        self.last_access = 0

    @property
    def is_root(self) -> bool:
        return self.parent is None


@dataclass
class Match:
    node: Node                  # deepest node covering the match (lock it while in use)
    length: int                 # matched tokens
    parts: list[torch.Tensor]   # the matched edges' slot runs, root first (sum of lengths = length)

    @property
    def slots(self) -> torch.Tensor:
        """[length] int64 (a new tensor; `copy_slots_into` writes the same without the temporary)."""
        return torch.cat(self.parts) if len(self.parts) > 1 else (self.parts[0] if self.parts else _EMPTY_SLOTS)

    def copy_slots_into(self, out: torch.Tensor) -> None:
        """out [length] int64 <- the matched slots: one concatenation, no temporary, no per-token work."""
        if self.parts:
            torch.cat(self.parts, out=out)


@dataclass(frozen=True)
class Hint:
    """Where a session's previous request ended in the tree: `node` ends `length` tokens deep and the path
    root..node holds `tokens[:length]` in KV slots `slots[:length]` (that request's own buffers)."""

    node: Node
    length: int
    tokens: np.ndarray
    slots: torch.Tensor

    def usable_for(self, tokens: np.ndarray) -> bool:
        """The node is still cached and `tokens` start with its path (one vectorised comparison)."""
        n = self.length
        return (self.node.parent is not None and len(tokens) >= n
                and bool(np.array_equal(tokens[:n], self.tokens[:n])))


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


class RadixCache:
    def __init__(self, allocator: BlockAllocator):
        self.allocator = allocator
        self._roots: dict[str, Node] = {}
        self._clock = itertools.count(1)
        self.cached_tokens = 0

    # -- queries -----------------------------------------------------------------------------
    def match(self, namespace: str, tokens: np.ndarray, hint: Hint | None = None) -> Match:
        """Longest cached prefix of `tokens` in `namespace` (splits an edge where the match ends).

        With a usable `hint` the walk starts at its node (the path above it is not re-stamped for LRU:
        only leaves are evicted, and it has a child on the way to every leaf below)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        now = next(self._clock)
        if hint is not None and hint.usable_for(tokens):
            node, i, parts = hint.node, hint.length, [hint.slots[: hint.length]]
        else:
            node, i, parts = self._root(namespace), 0, []
        node.last_access = now
        while i < len(tokens):
            child = node.children.get(int(tokens[i]))
            if child is None:
                break
            n = common_prefix_len(child.key, tokens[i:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            parts.append(child.slots)
            node, i = child, i + n
        return Match(node=node, length=i, parts=parts)

    def insert(self, namespace: str, tokens: np.ndarray, slots: torch.Tensor) -> int:
        """Cache `tokens` whose KV lives in `slots`; returns how many tokens were new.

        Tokens already cached keep their existing slots; the caller's duplicate
        slots are not referenced and die with the caller's blocks.
        """
        return self.insert_from(self._root(namespace), 0, tokens, slots)[0]

    def insert_from(self, node: Node, start: int, tokens: np.ndarray, slots: torch.Tensor) -> tuple[int, Node]:
        """`insert` below `node`, whose path holds `tokens[:start]` (e.g. the node a request matched and
        kept locked). Returns (tokens new to the cache, the node whose path ends at `tokens[-1]`)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) != len(slots):
            raise Internal(f"insert of {len(tokens)} tokens with {len(slots)} slots")
        i, now = start, next(self._clock)
        node.last_access = now
        while i < len(tokens):
            child = node.children.get(int(tokens[i]))
            if child is None:
                leaf = Node(tokens[i:].copy(), slots[i:].clone(), node)
                leaf.last_access = now
                node.children[int(tokens[i])] = leaf
                self.allocator.incref_slots(leaf.slots)
                self.cached_tokens += len(leaf.key)
                return len(leaf.key), leaf
            n = common_prefix_len(child.key, tokens[i:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node, i = child, i + n
        return 0, node

    # -- reference counts ----------------------------------------------------------------------
    def lock(self, node: Node) -> None:
        node.lock += 1

    def unlock(self, node: Node) -> None:
        if node.lock <= 0:
            raise Internal("radix cache unlock without a matching lock")
        node.lock -= 1

    # -- eviction ------------------------------------------------------------------------------
    def evict(self, free_blocks_wanted: int) -> int:
        """Evict LRU unlocked leaves until the allocator has `free_blocks_wanted` free; returns tokens evicted."""
        if self.allocator.num_free >= free_blocks_wanted:
            return 0
        heap = [(n.last_access, id(n), n) for n in self._leaves() if n.lock == 0]
        heapq.heapify(heap)
        evicted = 0
        while heap and self.allocator.num_free < free_blocks_wanted:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            evicted += self._remove_leaf(leaf)
            if parent is not None and not parent.is_root and not parent.children and parent.lock == 0:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return evicted

    def evictable_tokens(self) -> int:
        """Tokens in subtrees holding no lock (what evicting everything possible would free)."""
        total = 0
        for root in self._roots.values():
            order, stack = [], [root]
            while stack:
                node = stack.pop()
                order.append(node)
                stack.extend(node.children.values())
            pinned: set[int] = set()
            for node in reversed(order):                     # children before parents
                if node.lock or any(id(c) in pinned for c in node.children.values()):
                    pinned.add(id(node))
                elif not node.is_root:
                    total += len(node.key)
        return total

    def clear(self) -> None:
        """Drop every unlocked entry (tests: afterwards all blocks must be free)."""
        self.evict(self.allocator.num_blocks + 1)

    # -- internals -----------------------------------------------------------------------------
    def _root(self, namespace: str) -> Node:
        root = self._roots.get(namespace)
        if root is None:
            root = self._roots[namespace] = Node(_EMPTY_KEY, _EMPTY_SLOTS, None)
        return root

    def _split(self, child: Node, n: int) -> Node:
        """Split `child`'s edge after `n` tokens; returns the new upper node."""
        parent = child.parent
        assert parent is not None and 0 < n < len(child.key)
        upper = Node(child.key[:n], child.slots[:n], parent)
        upper.last_access = child.last_access        # the lock stays on `child`, which keeps its end
        parent.children[int(child.key[0])] = upper
        child.key, child.slots, child.parent = child.key[n:], child.slots[n:], upper
        upper.children[int(child.key[0])] = child
        return upper

    def _remove_leaf(self, leaf: Node) -> int:
        parent = leaf.parent
        if parent is None or leaf.children or leaf.lock:
            raise Internal("only an unlocked leaf can be evicted")
        del parent.children[int(leaf.key[0])]
        leaf.parent = None
        self.allocator.decref_slots(leaf.slots)
        self.cached_tokens -= len(leaf.key)
        return len(leaf.key)

    def _nodes(self):
        stack = list(self._roots.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _leaves(self):
        return (n for n in self._nodes() if not n.children and not n.is_root)
