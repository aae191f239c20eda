"""Which slice of the model one shard worker holds.

A shard is a pipeline stage (a contiguous range of decoder layers) and,
within it, one tensor-parallel rank. The embedding lives only on the first
stage; the final norm and lm_head only on the last. Tensor parallelism splits
attention heads (q/k/v rows, o_proj columns) and MLP columns (gate/up rows,
down columns) evenly across ranks; the row-parallel outputs (o_proj, down)
are summed by an all-reduce callable the distributed layer injects.

Public API (stable): ShardSpec, AllReduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from flint.engine.model.config import ModelConfig
from flint.errors import InvalidArgument

# Sums a partial result across tensor-parallel ranks (in place or not) and returns the sum.
AllReduce = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ShardSpec:
    layer_start: int = 0
    layer_end: int | None = None   # exclusive; None = through the last layer
    tp_rank: int = 0
    tp_size: int = 1

    def resolve(self, config: ModelConfig) -> "ShardSpec":
        """A copy with `layer_end` filled in, after checking the spec fits `config`."""
        end = config.num_layers if self.layer_end is None else self.layer_end
        if not 0 <= self.layer_start < end <= config.num_layers:
            raise InvalidArgument(
                f"shard layers [{self.layer_start}, {end}) must be a non-empty range within "
                f"[0, {config.num_layers}) for a {config.num_layers}-layer model"
            )
        if not 0 <= self.tp_rank < self.tp_size:
            raise InvalidArgument(f"tp_rank must be in [0, tp_size={self.tp_size}), got {self.tp_rank}")
        for name, value in (
            ("num_attention_heads", config.num_heads),
            ("num_key_value_heads", config.num_kv_heads),
            ("intermediate_size", config.intermediate_size),
        ):
            if value % self.tp_size:
                raise InvalidArgument(f"tp_size {self.tp_size} must divide {name} ({value})")
        return ShardSpec(self.layer_start, end, self.tp_rank, self.tp_size)

    def is_first(self) -> bool:
        return self.layer_start == 0

    def is_last(self, config: ModelConfig) -> bool:
        return (config.num_layers if self.layer_end is None else self.layer_end) == config.num_layers

    def local_heads(self, config: ModelConfig) -> tuple[int, int]:
        """(first q head, number of q heads) this rank holds."""
        n = config.num_heads // self.tp_size
        return self.tp_rank * n, n

    def local_kv_heads(self, config: ModelConfig) -> tuple[int, int]:
        n = config.num_kv_heads // self.tp_size
        return self.tp_rank * n, n

    def local_intermediate(self, config: ModelConfig) -> tuple[int, int]:
        n = config.intermediate_size // self.tp_size
        return self.tp_rank * n, n
