"""Sharding plan pieces that need no cluster: layer split, placement bundles, step wire format."""

from __future__ import annotations

import pytest
import torch

from flint.distributed import wire
from flint.distributed.config import ShardingConfig
from flint.distributed.placement import one_shard_options, stage_bundles, strategy
from flint.engine.runner import StepBatch
from flint.errors import InvalidArgument


def test_layer_ranges_are_contiguous_and_cover_the_model():
    assert ShardingConfig(pp=2).layer_ranges(3) == [(0, 2), (2, 3)]
    assert ShardingConfig(pp=4).layer_ranges(10) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert ShardingConfig(pp=1).layer_ranges(5) == [(0, 5)]


def test_ranks_number_stages_then_tp_ranks_after_the_driver():
    cfg = ShardingConfig(pp=2, tp=2)
    assert [cfg.rank(s, r) for s in range(2) for r in range(2)] == [1, 2, 3, 4]
    assert cfg.world_size == 4


def test_a_bundle_per_stage_holds_all_its_tp_ranks():
    cfg = ShardingConfig(pp=3, tp=2, placement="strict_spread")
    assert stage_bundles(cfg, cluster_has_shard_resource=True) == [{"flint_shard": 2.0}] * 3
    assert strategy(cfg) == "STRICT_SPREAD"
    gpu = ShardingConfig(pp=2, tp=4, accelerator="gpu")
    assert stage_bundles(gpu, cluster_has_shard_resource=False) == [{"GPU": 4.0}] * 2
    assert one_shard_options(gpu, False) == {"num_cpus": 0.0, "num_gpus": 1.0}
    # A plain `ray.init()` has no flint_shard resource: a CPU sliver stands in.
    assert one_shard_options(ShardingConfig(), False) == {"num_cpus": 0.01, "num_gpus": 0.0}


def test_bad_sharding_config_names_the_key():
    with pytest.raises(InvalidArgument, match="unknown key"):
        ShardingConfig.from_dict({"pipeline": 2})
    with pytest.raises(InvalidArgument, match="placement must be one of"):
        ShardingConfig(placement="anywhere")
    with pytest.raises(InvalidArgument, match="tp must be an integer >= 1"):
        ShardingConfig(tp=0)


def test_slot_maps_travel_once_then_only_positions():
    reg = wire.SlotRegistry()
    slots_a, slots_b = torch.arange(10, 30), torch.arange(40, 45)
    prefill = StepBatch(torch.arange(7), [("a", slots_a, 0, 4), ("b", slots_b, 0, 3)], torch.tensor([3, 6]))
    header, payload = reg.encode(prefill)
    assert wire.payload_len(header) == payload.numel()
    msg = wire.decode(header, payload)
    assert msg.input_ids.tolist() == list(range(7))
    assert msg.starts.tolist() == [0, 0] and msg.news.tolist() == [4, 3]
    assert [(h, s.tolist()) for h, s in msg.registered] == [(0, slots_a.tolist()), (1, slots_b.tolist())]

    reg.release("b")
    decode = StepBatch(torch.tensor([5]), [("a", slots_a, 4, 1)], torch.tensor([0]))
    header, payload = reg.encode(decode)
    msg = wire.decode(header, payload)
    assert msg.registered == [] and msg.released == [1]
    assert msg.handles.tolist() == [0] and msg.starts.tolist() == [4]
    assert payload.numel() == 1 + 3 + 1 + 1          # ids, (handle, start, n), logit row, released
