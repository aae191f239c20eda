"""`DistributedRunner`: the engine's `ModelRunner` over pp × tp shard workers.

The driver (the process that runs the scheduler: an engine replica) joins
the workers' torch.distributed group as rank 0. Each step it broadcasts the
step's inputs once (header + packed payload, see `wire`) and receives the
logits from the last stage's tp rank 0: no Ray call per step. Ray does what
it is good at here: placing the workers (placement group, one bundle per
stage), starting them, and telling us when they die.

One process group per process (torch.distributed is process-global), so one
DistributedRunner per engine replica process.
"""

from __future__ import annotations

import socket
from collections.abc import Hashable

import torch
import torch.distributed as dist

from flint.distributed import wire
from flint.distributed.config import ShardingConfig
from flint.distributed.placement import create_placement_group
from flint.distributed.worker import ShardWorker, build_groups, init_process_group
from flint.engine.loader import load_config
from flint.engine.model.shard import ShardSpec
from flint.engine.runner import StepBatch
from flint.errors import InvalidArgument, Unavailable


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class DistributedRunner:
    def __init__(self, checkpoint: str, *, sharding: ShardingConfig, dtype: str = "float32"):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if dist.is_initialized():
            raise InvalidArgument("this process already runs a torch.distributed group: one DistributedRunner "
                                  "per process (run each engine replica in its own process)")
        self.sharding = sharding
        self.config = load_config(checkpoint)
        ranges = sharding.layer_ranges(self.config.num_layers)
        for start, end in ranges:   # fail here, with a clear message, not inside a worker
            ShardSpec(start, end, 0, sharding.tp).resolve(self.config)
        self._registry = wire.SlotRegistry()
        self._loops: list = []
        self._closed = False
        self.pg, opts = create_placement_group(sharding)
        actor = ray.remote(ShardWorker)
        self.workers = []
        for stage, layers in enumerate(ranges):
            strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=stage)
            for tp_rank in range(sharding.tp):
                self.workers.append(actor.options(**opts, scheduling_strategy=strategy, max_concurrency=2).remote(
                    str(checkpoint), dtype, _as_dict(sharding), stage, tp_rank, layers))
        address = f"{ray.util.get_node_ip_address()}:{_free_port()}"
        setups = [w.setup.remote(address) for w in self.workers]
        try:
            data_backend = init_process_group(sharding, address, 0, sharding.start_timeout_s)
            build_groups(sharding, data_backend)
            self.placement = ray.get(setups, timeout=sharding.start_timeout_s)
        except Exception as exc:
            self._teardown()
            raise Unavailable(f"shard workers did not start: {exc}") from exc
        self._logits_src = sharding.rank(sharding.pp - 1, 0)

    def init_kv(self, num_slots: int) -> None:
        import ray

        ray.get([w.init_kv.remote(num_slots) for w in self.workers], timeout=self.sharding.start_timeout_s)
        self._loops = [w.run.remote() for w in self.workers]

    def execute(self, batch: StepBatch) -> torch.Tensor:
        if not self._loops:
            raise InvalidArgument("DistributedRunner.execute before init_kv")
        header, payload = self._registry.encode(batch)
        logits = torch.empty(int(batch.logit_rows.shape[0]), self.config.vocab_size, dtype=torch.float32)
        try:
            dist.broadcast(header, src=0)
            dist.broadcast(payload, src=0)
            dist.recv(logits, src=self._logits_src)
        except Exception as exc:  # a worker died or hung: gloo raises after the group timeout
            raise Unavailable(f"shard worker lost during a step ({exc.__class__.__name__}: {exc}); "
                              "the replica must restart its shards") from exc
        return logits                                                   # [N, V]

    def release(self, key: Hashable) -> None:
        self._registry.release(key)

    def check(self) -> None:
        """Raise Unavailable if a shard worker's step loop has ended (worker died or failed)."""
        import ray

        if not self._loops or self._closed:
            return
        done, _ = ray.wait(self._loops, num_returns=1, timeout=0)
        if done:
            try:
                ray.get(done[0])
                reason = "its step loop returned"
            except Exception as exc:  # noqa: BLE001 - reported, not handled
                reason = f"{exc.__class__.__name__}: {exc}"
            raise Unavailable(f"a shard worker of this replica stopped ({reason}); the replica must restart")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        import ray

        if self._loops:
            try:
                dist.broadcast(wire.stop_header(), src=0)
                ray.get(self._loops, timeout=10)
            except Exception:
                pass
        self._teardown()

    def _teardown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        if dist.is_initialized():
            dist.destroy_process_group()
        for w in self.workers:
            ray.kill(w)
        remove_placement_group(self.pg)

    def __enter__(self) -> "DistributedRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_dict(cfg: ShardingConfig) -> dict:
    import dataclasses

    return dataclasses.asdict(cfg)
