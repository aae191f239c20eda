"""The seam between the scheduler and whatever runs the model: `ModelRunner`.

The engine core decides WHAT runs each step (which sequences, which new
tokens, which KV slots); a runner decides WHERE it runs. `LocalRunner` runs
the whole model in this process; `flint.distributed.runner.DistributedRunner`
runs it on shard workers (pipeline stages / tensor-parallel ranks, Ray
actors) with the same interface, so the scheduler never knows the difference
and outputs with N shards equal 1 shard.

A runner owns the KV tensors (on a shard worker they hold only its layers and
KV heads); the engine owns the slot bookkeeping (blocks, prefix cache) and
hands each sequence's slot map to the runner. A sequence's slot map is fixed
from admission to release, so a distributed runner ships it to its workers
once and afterwards only the per-step (start, n) pairs travel.

One step:
    logits = runner.execute(StepBatch(
        input_ids=ids,                          # [T] int64, all sequences packed
        seqs=[(key, slots, start, n), ...],     # per sequence, in packing order
        logit_rows=rows,                        # [N] int64 rows of T to project
    ))                                          # -> float32 [N, vocab]
    runner.release(key)                         # sequence finished: forget its slot map
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol

import torch

from flint.engine.model.config import ModelConfig
from flint.engine.paged_attention import PagedAttention


@dataclass(frozen=True)
class StepBatch:
    input_ids: torch.Tensor                                   # [T] int64
    seqs: list[tuple[Hashable, torch.Tensor, int, int]]       # (key, slot map [>= start+n] int64, start, n)
    logit_rows: torch.Tensor                                  # [N] int64, increasing rows of T

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])


class ModelRunner(Protocol):
    config: ModelConfig

    def init_kv(self, num_slots: int) -> None:
        """Allocate KV storage for `num_slots` token slots (slot = block * block_size + offset)."""

    def execute(self, batch: StepBatch) -> torch.Tensor:
        """Run one forward pass; float32 logits [N, vocab] for `batch.logit_rows`."""

    def release(self, key: Hashable) -> None:
        """The sequence `key` will not appear again; its slot map may be forgotten."""

    def close(self) -> None: ...


class LocalRunner:
    """The whole model in this process, over a paged KV cache it owns (or is given).

    The engine builds step inputs on the host; `execute` moves every one of them (token ids, the slot maps'
    used prefixes, logit rows) to the model's device, and PagedAttention builds positions and its index tensors
    there. Slot maps are moved every step (the engine writes new blocks' slots into them as a sequence grows);
    on the CPU, where moving is a no-op, they are handed over whole, as the engine made them.
    tests/engine/test_device_discipline.py runs the model on the meta device to prove it.
    """

    def __init__(self, model, *, k_cache: torch.Tensor | None = None, v_cache: torch.Tensor | None = None):
        self.model = model
        self.config: ModelConfig = model.config
        self.device: torch.device = model.device
        self.attn: PagedAttention | None = None
        # Set by `flint.engine.compiled.enable` (compile=true): runs pure decode steps.
        self.compiled_decode = None
        if k_cache is not None and v_cache is not None:
            self._attach(k_cache, v_cache)

    def init_kv(self, num_slots: int) -> None:
        m = self.model
        shape = (m.num_local_layers, num_slots, m.layers[0].n_kv, self.config.head_dim)   # [L, S, KV, D]
        self._attach(torch.zeros(shape, dtype=m.dtype, device=m.device),
                     torch.zeros(shape, dtype=m.dtype, device=m.device))

    def _attach(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.attn = PagedAttention(k, v, num_heads=self.model.layers[0].n_heads,
                                   sliding_window=self.config.sliding_window)

    def execute(self, batch: StepBatch) -> torch.Tensor:
        if self.attn is None:
            raise RuntimeError("LocalRunner.execute before init_kv")
        dev = self.device
        if dev.type == "cpu":       # slot maps are built on the CPU: moving them (or their used prefix) is a no-op
            seqs = [(slots, start, n) for _, slots, start, n in batch.seqs]
        else:
            seqs = [(slots[: start + n].to(dev, non_blocking=True), start, n) for _, slots, start, n in batch.seqs]
        positions = self.attn.begin_step(seqs)                                                   # [T]
        forward = self.model
        if self.compiled_decode is not None and batch.num_tokens == len(batch.seqs):   # 1 token per sequence
            forward = self.compiled_decode
        hidden = forward(batch.input_ids.to(dev, non_blocking=True), positions, self.attn)       # [T, d]
        if batch.logit_rows.shape[0] != batch.num_tokens:     # else every row, in order (decode): no gather
            hidden = hidden[batch.logit_rows.to(dev, non_blocking=True)]                         # [N, d]
        return self.model.compute_logits(hidden)                                                 # [N, V]

    def release(self, key: Hashable) -> None:
        pass

    def close(self) -> None:
        self.attn = None
