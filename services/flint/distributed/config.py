"""`ShardingConfig`: how one engine replica's model is split over shard workers.

pp pipeline stages × tp tensor-parallel ranks = pp * tp shard workers, one
per accelerator. Stages get contiguous layer ranges, as even as possible.
TP ranks of one stage always share a node (their all-reduce runs twice per
layer); stages are spread over nodes as `placement` says.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from flint.errors import InvalidArgument

PLACEMENTS = ("spread", "strict_spread", "pack")
ACCELERATORS = ("cpu", "gpu")


@dataclass(frozen=True)
class ShardingConfig:
    pp: int = 1                        # pipeline stages
    tp: int = 1                        # tensor-parallel ranks per stage
    placement: str = "spread"          # how stages spread over nodes: spread | strict_spread | pack
    accelerator: str = "cpu"           # gpu: one GPU per shard (num_gpus=1), NCCL between shards
    shard_resource: str = "flint_shard"  # CPU clusters: custom resource that counts shard slots
    cpus_per_shard: float = 0.0        # Ray CPUs each shard worker reserves (small: 2-core dev box)
    torch_threads: int = 1             # intra-op threads per shard worker
    start_timeout_s: float = 120.0     # placement + model load + process-group rendezvous
    step_timeout_s: float = 60.0       # a step longer than this means a worker is gone

    def __post_init__(self) -> None:
        for name in ("pp", "tp", "torch_threads"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"sharding {name} must be an integer >= 1, got {value!r}")
        if self.placement not in PLACEMENTS:
            raise InvalidArgument(f"sharding placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")
        if self.accelerator not in ACCELERATORS:
            raise InvalidArgument(f"sharding accelerator must be cpu or gpu, got {self.accelerator!r}")
        if self.cpus_per_shard < 0:
            raise InvalidArgument(f"cpus_per_shard must be >= 0, got {self.cpus_per_shard}")
        if self.start_timeout_s <= 0 or self.step_timeout_s <= 0:
            raise InvalidArgument("start_timeout_s and step_timeout_s must be > 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None = None) -> "ShardingConfig":
        values = {str(k).replace("-", "_"): v for k, v in dict(data or {}).items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InvalidArgument(f"sharding config: unknown key(s) {', '.join(unknown)}; "
                                  f"allowed keys: {', '.join(sorted(names))}")
        return cls(**values)

    @property
    def world_size(self) -> int:
        """Shard workers (the driver joins the process group as one more rank)."""
        return self.pp * self.tp

    def layer_ranges(self, num_layers: int) -> list[tuple[int, int]]:
        """Contiguous [start, end) per stage; earlier stages take one extra layer if uneven."""
        if self.pp > num_layers:
            raise InvalidArgument(f"pp={self.pp} stages need at least {self.pp} layers; the model has {num_layers}")
        base, extra = divmod(num_layers, self.pp)
        ranges, start = [], 0
        for stage in range(self.pp):
            end = start + base + (1 if stage < extra else 0)
            ranges.append((start, end))
            start = end
        return ranges

    def rank(self, stage: int, tp_rank: int) -> int:
        """Global torch.distributed rank of a shard (rank 0 is the driver)."""
        return 1 + stage * self.tp + tp_rank
