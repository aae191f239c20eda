"""Pipeline, tensor and PP x TP sharding on shard workers give the tokens of one shard.

Runs on the shared 3-node local cluster, so pipeline stages live on
different Ray nodes and tensor-parallel ranks of a stage share one.
"""

from __future__ import annotations

import pytest
import torch

from flint.distributed.config import ShardingConfig
from flint.distributed.probe import greedy_generate
from flint.distributed.runner import DistributedRunner
from flint.engine.loader import load_model
from flint.engine.runner import LocalRunner, StepBatch
from flint.errors import InvalidArgument

PROMPTS = [[1, 37, 200, 15, 88, 301, 12, 7, 450, 66], [1, 99, 5], [1, 250, 251, 252, 253, 4]]
NEW_TOKENS = 10
KV_SLOTS = 128


@pytest.fixture(scope="module")
def reference(llama_checkpoint):
    runner = LocalRunner(load_model(llama_checkpoint))
    runner.init_kv(KV_SLOTS)
    tokens = greedy_generate(runner, PROMPTS, NEW_TOKENS)
    # A degenerate reference (one token repeated) would make equality a weak check.
    assert all(len(set(t)) > 2 for t in tokens), tokens
    return runner, tokens


@pytest.mark.parametrize("pp,tp", [(2, 1), (1, 2), (2, 2)], ids=["pp2", "tp2", "pp2xtp2"])
def test_sharded_greedy_tokens_equal_one_shard(cluster_ray, llama_checkpoint, reference, pp, tp):
    local, expected = reference
    sharding = ShardingConfig(pp=pp, tp=tp, placement="strict_spread" if pp > 1 else "spread")
    with DistributedRunner(str(llama_checkpoint), sharding=sharding) as runner:
        runner.init_kv(KV_SLOTS)
        assert greedy_generate(runner, PROMPTS, NEW_TOKENS) == expected

        # Logits agree closely too (TP sums partial products in another order).
        ids = torch.tensor(PROMPTS[0])
        slots = torch.arange(64, 64 + len(ids))
        batch = StepBatch(ids, [("probe", slots, 0, len(ids))], torch.tensor([len(ids) - 1]))
        torch.testing.assert_close(runner.execute(batch), local.execute(batch), rtol=1e-4, atol=1e-4)

        nodes = {(p["stage"], p["tp_rank"]): p["node_id"] for p in runner.placement}
    for stage in range(pp):   # TP ranks of a stage are packed on one node
        assert len({nodes[(stage, r)] for r in range(tp)}) == 1
    if pp > 1:                # stages spread over nodes
        assert len({nodes[(s, 0)] for s in range(pp)}) == pp


def test_sharding_that_does_not_fit_the_model_is_rejected_before_placing(cluster_ray, llama_checkpoint):
    with pytest.raises(InvalidArgument, match="tp_size 3 must divide num_attention_heads"):
        DistributedRunner(str(llama_checkpoint), sharding=ShardingConfig(tp=3))
    with pytest.raises(InvalidArgument, match="pp=4 stages need at least 4 layers"):
        DistributedRunner(str(llama_checkpoint), sharding=ShardingConfig(pp=4))


def test_a_dead_shard_worker_makes_the_runner_unhealthy(cluster_ray, llama_checkpoint):
    import time

    import ray

    from flint.errors import Unavailable

    with DistributedRunner(str(llama_checkpoint), sharding=ShardingConfig(pp=2)) as runner:
        runner.init_kv(KV_SLOTS)
        runner.check()                                   # healthy while both stages loop
        ray.kill(runner.workers[1])
        deadline = time.monotonic() + 30
        with pytest.raises(Unavailable, match="shard worker of this replica stopped"):
            while time.monotonic() < deadline:
                runner.check()
                time.sleep(0.2)


def test_engine_scheduler_over_four_shards_generates_what_it_does_in_process(cluster_ray, llama_checkpoint):
    """The real engine (scheduler, paged KV slots, batching) with its runner swapped: same tokens."""
    from flint.engine.config import EngineConfig
    from flint.engine.engine import Engine
    from flint.engine.tokenizer import Tokenizer
    from flint.engine.types import GenerateRequest, SamplingParams

    config = EngineConfig.from_dict({"model": str(llama_checkpoint), "kv_cache_bytes": 1 << 22,
                                     "max_context_tokens": 256})

    def generate(runner) -> dict[str, list[int]]:
        engine = Engine(config, runner, Tokenizer.from_dir(llama_checkpoint), model_name="tiny")
        engine.recorded_outputs = {}
        for i, prefix in enumerate(["def add(a, b):\n    return", "class Point:\n    def __init__(self"]):
            engine.add_request(GenerateRequest(request_id=f"r{i}", prefix=prefix,
                                               sampling=SamplingParams(max_tokens=12)))
        engine.run_until_done()
        return engine.recorded_outputs

    local = generate(LocalRunner(load_model(llama_checkpoint)))
    with DistributedRunner(str(llama_checkpoint), sharding=ShardingConfig(pp=2, tp=2)) as runner:
        sharded = generate(runner)
    assert sum(len(t) for t in local.values()) > 4
    assert sharded == local
