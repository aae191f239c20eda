"""`ShardWorker`: one Ray actor per accelerator, holding one slice of the model.

After `setup` (join the process group, load only this shard's weights) and
`init_kv`, the driver calls `run` once: the worker then loops on the control
group, one step per broadcast, until the driver broadcasts STOP. No Ray call
happens per step; Ray only places, starts and stops the worker.

Per step:
  recv header + payload (broadcast from the driver, rank 0)
  first stage: embed input_ids; later stages: recv hidden [T, d] from the
  same tp rank of the previous stage
  forward through this shard's layers (TP: all-reduce inside the layers)
  not last stage: send hidden to the next stage
  last stage, tp rank 0: send float32 logits [N, vocab] to the driver
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from flint.distributed import wire
from flint.distributed.config import ShardingConfig
from flint.engine.model.shard import ShardSpec
from flint.engine.paged_attention import PagedAttention


def build_groups(cfg: ShardingConfig, data_backend: str) -> tuple[list, object]:
    """TP group per stage and the worker-to-worker group; every rank (driver too) calls this identically."""
    tp_groups = []
    if cfg.tp > 1:
        for stage in range(cfg.pp):
            ranks = [cfg.rank(stage, r) for r in range(cfg.tp)]
            tp_groups.append(dist.new_group(ranks=ranks, backend=data_backend))
    data_group = None
    if data_backend != "gloo":
        data_group = dist.new_group(ranks=list(range(1, cfg.world_size + 1)), backend=data_backend)
    return tp_groups, data_group


def init_process_group(cfg: ShardingConfig, address: str, rank: int, timeout_s: float) -> str:
    """Join the control group (gloo: the driver has no accelerator); returns the data-plane backend."""
    data_backend = "nccl" if cfg.accelerator == "gpu" else "gloo"
    backend = "cpu:gloo,cuda:nccl" if data_backend == "nccl" else "gloo"
    dist.init_process_group(backend=backend, init_method=f"tcp://{address}", rank=rank,
                            world_size=cfg.world_size + 1, timeout=datetime.timedelta(seconds=timeout_s))
    return data_backend


class ShardWorker:
    def __init__(self, checkpoint: str, dtype: str, sharding: dict, stage: int, tp_rank: int,
                 layers: tuple[int, int]):
        self.cfg = ShardingConfig.from_dict(sharding)
        self.checkpoint, self.dtype = checkpoint, dtype
        self.stage, self.tp_rank = stage, tp_rank
        self.shard = ShardSpec(layer_start=layers[0], layer_end=layers[1], tp_rank=tp_rank, tp_size=self.cfg.tp)
        self.rank = self.cfg.rank(stage, tp_rank)
        self.device = torch.device("cuda" if self.cfg.accelerator == "gpu" else "cpu")
        torch.set_num_threads(self.cfg.torch_threads)
        self.model = None
        self.attn: PagedAttention | None = None
        self.slot_maps: dict[int, torch.Tensor] = {}
        self.steps = 0

    def where(self) -> dict:
        import ray

        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "stage": self.stage, "tp_rank": self.tp_rank, "rank": self.rank}

    def setup(self, address: str) -> dict:
        from flint.engine.loader import load_model

        data_backend = init_process_group(self.cfg, address, self.rank, self.cfg.step_timeout_s)
        tp_groups, self.data_group = build_groups(self.cfg, data_backend)
        all_reduce = None
        if self.cfg.tp > 1:
            group = tp_groups[self.stage]

            def all_reduce(t: torch.Tensor) -> torch.Tensor:
                dist.all_reduce(t, group=group)
                return t

        self.model = load_model(self.checkpoint, dtype=self.dtype, device=self.device, shard=self.shard,
                                all_reduce=all_reduce)
        return self.where()

    def init_kv(self, num_slots: int) -> int:
        m = self.model
        shape = (m.num_local_layers, num_slots, m.layers[0].n_kv, m.config.head_dim)   # [L, S, KV_local, D]
        k = torch.zeros(shape, dtype=m.dtype, device=self.device)
        v = torch.zeros(shape, dtype=m.dtype, device=self.device)
        self.attn = PagedAttention(k, v, num_heads=m.layers[0].n_heads, sliding_window=m.config.sliding_window)
        return 2 * k.numel() * k.element_size()

    def run(self) -> int:
        """The step loop; returns the number of steps run when the driver says STOP."""
        header = torch.empty(wire.HEADER_LEN, dtype=torch.int64)
        try:
            while True:
                dist.broadcast(header, src=0)
                if int(header[0]) == wire.CMD_STOP:
                    return self.steps
                payload = torch.empty(wire.payload_len(header), dtype=torch.int64)
                dist.broadcast(payload, src=0)
                self._step(wire.decode(header, payload))
                self.steps += 1
        finally:
            dist.destroy_process_group()

    def _step(self, msg: wire.StepMessage) -> None:
        for handle, slots in msg.registered:
            self.slot_maps[handle] = slots.to(self.device, copy=True)   # kept on the KV cache's device
        for handle in msg.released:
            self.slot_maps.pop(handle, None)
        seqs = [(self.slot_maps[h], s, n) for h, s, n in
                zip(msg.handles.tolist(), msg.starts.tolist(), msg.news.tolist())]
        positions = self.attn.begin_step(seqs)                                      # [T]
        m, cfg = self.model, self.cfg
        if m.is_first:
            x = m(msg.input_ids.to(self.device), positions, self.attn)   # [T, d]
        else:
            hidden = torch.empty(msg.input_ids.shape[0], m.config.hidden_size, dtype=m.dtype, device=self.device)
            dist.recv(hidden, src=cfg.rank(self.stage - 1, self.tp_rank), group=self.data_group)
            x = m(None, positions, self.attn, hidden_states=hidden)
        if not m.is_last:
            dist.send(x.contiguous(), dst=cfg.rank(self.stage + 1, self.tp_rank), group=self.data_group)
        elif self.tp_rank == 0:
            logits = m.compute_logits(x[msg.logit_rows.to(self.device)])             # [N, V] float32
            dist.send(logits.cpu().contiguous(), dst=0)
