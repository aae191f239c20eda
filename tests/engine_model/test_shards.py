"""Pipeline stages and tensor-parallel ranks (simulated in one process) give one shard's logits."""

from __future__ import annotations

import threading

import pytest
import torch

from flint.engine.loader import load_model
from flint.engine.model.dense import DenseAttention
from flint.engine.model.shard import ShardSpec
from flint.errors import InvalidArgument

IDS = [5, 17, 99, 230, 41, 8, 300, 12, 77]


class ThreadSumAllReduce:
    """All-reduce (sum) across `world` threads of one process: a stand-in for torch.distributed."""

    def __init__(self, world: int):
        self.world = world
        self.barrier = threading.Barrier(world)
        self.parts: dict[int, torch.Tensor] = {}

    def for_rank(self, rank: int):
        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            self.parts[rank] = t
            self.barrier.wait()
            total = sum(self.parts[r] for r in range(self.world))
            self.barrier.wait()
            return total

        return all_reduce


def prefill_then_decode(model, ids: list[int], prefill: int) -> torch.Tensor:
    attn = DenseAttention.for_model(model)
    attn.add_sequence(0, 32)
    chunks = [ids[:prefill]] + [[t] for t in ids[prefill:]]
    out = []
    for chunk in chunks:
        positions = attn.begin_step([(0, len(chunk))])
        out.append(model.compute_logits(model(torch.tensor(chunk), positions, attn)))
    return torch.cat(out)


def run_ranks(ranks, prefill: int) -> dict[int, torch.Tensor]:
    """Run every tensor-parallel rank in its own thread (they meet in the all-reduce); logits per rank."""
    results: dict[int, torch.Tensor] = {}

    def run(rank: int) -> None:
        results[rank] = prefill_then_decode(ranks[rank], IDS, prefill)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(len(ranks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


@pytest.fixture(scope="module")
def reference(llama_checkpoint) -> torch.Tensor:
    return prefill_then_decode(load_model(llama_checkpoint), IDS, prefill=6)


def run_pipeline(first, last, ids: list[int], prefill: int) -> torch.Tensor:
    caches = [DenseAttention.for_model(m) for m in (first, last)]
    for c in caches:
        c.add_sequence(0, 32)
    out = []
    for chunk in [ids[:prefill]] + [[t] for t in ids[prefill:]]:
        positions = [c.begin_step([(0, len(chunk))]) for c in caches]
        hidden = first(torch.tensor(chunk), positions[0], caches[0])
        hidden = last(None, positions[1], caches[1], hidden_states=hidden)
        out.append(last.compute_logits(hidden))
    return torch.cat(out)


def test_pipeline_stages_equal_one_shard(llama_checkpoint, reference):
    first = load_model(llama_checkpoint, shard=ShardSpec(layer_start=0, layer_end=1))
    last = load_model(llama_checkpoint, shard=ShardSpec(layer_start=1))
    assert first.lm_head is None and first.norm is None and first.num_local_layers == 1
    assert last.embed is None and last.num_local_layers == 2
    torch.testing.assert_close(run_pipeline(first, last, IDS, 6), reference, atol=1e-5, rtol=1e-5)


def test_pipeline_last_stage_of_tied_model_reads_the_embedding_as_lm_head(qwen2_checkpoint):
    reference = prefill_then_decode(load_model(qwen2_checkpoint), IDS, prefill=4)
    first = load_model(qwen2_checkpoint, shard=ShardSpec(layer_start=0, layer_end=1))
    last = load_model(qwen2_checkpoint, shard=ShardSpec(layer_start=1))
    torch.testing.assert_close(run_pipeline(first, last, IDS, 4), reference, atol=1e-5, rtol=1e-5)


def test_tensor_parallel_two_ranks_equal_one_shard(llama_checkpoint, reference):
    reduce = ThreadSumAllReduce(2)
    ranks = [load_model(llama_checkpoint, shard=ShardSpec(tp_rank=r, tp_size=2), all_reduce=reduce.for_rank(r))
             for r in range(2)]
    layer = ranks[0].layers[0]
    assert (layer.n_heads, layer.n_kv) == (2, 1)                         # half the heads
    assert layer.gate_up.weight.shape == (2 * 64, 64)                    # half of 2 x 128 MLP columns
    results = run_ranks(ranks, prefill=6)
    assert set(results) == {0, 1}
    for rank in range(2):
        torch.testing.assert_close(results[rank], reference, atol=1e-5, rtol=1e-5)


def test_tensor_parallel_sharded_checkpoint_with_biases(llama_sharded_checkpoint):
    reference = prefill_then_decode(load_model(llama_sharded_checkpoint), IDS, prefill=5)
    reduce = ThreadSumAllReduce(2)
    ranks = [load_model(llama_sharded_checkpoint, shard=ShardSpec(tp_rank=r, tp_size=2),
                        all_reduce=reduce.for_rank(r)) for r in range(2)]
    results = run_ranks(ranks, prefill=5)
    torch.testing.assert_close(results[0], reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec, needle", [
    (ShardSpec(layer_start=2, layer_end=2), "non-empty range"),
    (ShardSpec(layer_start=0, layer_end=9), "non-empty range"),
    (ShardSpec(tp_rank=2, tp_size=2), "tp_rank"),
    (ShardSpec(tp_size=3), "tp_size 3 must divide"),
])
def test_bad_shard_specs_are_invalid_argument(llama_checkpoint, spec, needle):
    with pytest.raises(InvalidArgument, match=needle):
        load_model(llama_checkpoint, shard=spec, all_reduce=lambda t: t)


def test_tensor_parallel_without_all_reduce_is_rejected(llama_checkpoint):
    with pytest.raises(InvalidArgument, match="all_reduce"):
        load_model(llama_checkpoint, shard=ShardSpec(tp_rank=0, tp_size=2))
