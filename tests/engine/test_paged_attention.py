"""Paged attention over scattered slots, chunked prefill and batching give the reference logits."""

import pytest
import torch

from flint.engine.loader import load_model
from flint.engine.model.dense import DenseAttention
from flint.engine.runner import LocalRunner, StepBatch


def _reference_logits(model, ids: torch.Tensor) -> torch.Tensor:
    attn = DenseAttention.for_model(model)
    attn.add_sequence("s", max_tokens=len(ids))
    positions = attn.begin_step([("s", len(ids))])
    return model.compute_logits(model(ids, positions, attn))                 # [T, V]


def _scattered_slots(n: int, num_slots: int, seed: int) -> torch.Tensor:
    return torch.randperm(num_slots, generator=torch.Generator().manual_seed(seed))[:n]


@pytest.mark.parametrize("fixture", ["qwen2_checkpoint", "llama_checkpoint", "mistral_checkpoint"])
@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_chunked_prefill_over_paged_slots_equals_one_shot(request, fixture, chunk):
    model = load_model(request.getfixturevalue(fixture))
    ids = torch.randint(3, model.config.vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    expected = _reference_logits(model, ids)
    runner = LocalRunner(model)
    runner.init_kv(256)
    slots = _scattered_slots(40, 256, seed=1)
    got = []
    for start in range(0, len(ids), chunk):
        n = min(chunk, len(ids) - start)
        got.append(runner.execute(StepBatch(ids[start : start + n], [("s", slots, start, n)], torch.arange(n))))
    torch.testing.assert_close(torch.cat(got), expected, rtol=1e-4, atol=1e-4)


def test_batched_decode_rows_and_prefill_chunks_equal_each_alone(qwen2_checkpoint):
    model = load_model(qwen2_checkpoint)
    gen = torch.Generator().manual_seed(2)
    lengths = [5, 17, 30]
    prompts = [torch.randint(3, model.config.vocab_size, (n,), generator=gen) for n in lengths]
    runner = LocalRunner(model)
    runner.init_kv(512)
    slot_maps = [torch.arange(i * 100, i * 100 + n) for i, n in enumerate(lengths)]
    # Prefill all but the last token of each, then one mixed step: two decode rows + a 2-token chunk.
    for p, s in zip(prompts, slot_maps):
        runner.execute(StepBatch(p[:-2], [("x", s, 0, len(p) - 2)], torch.tensor([len(p) - 3])))
    seqs = [("a", slot_maps[0], 3, 1), ("b", slot_maps[1], 15, 2), ("c", slot_maps[2], 28, 1)]
    ids = torch.cat([prompts[0][3:4], prompts[1][15:17], prompts[2][28:29]])
    mixed = runner.execute(StepBatch(ids, seqs, torch.arange(4)))
    expected = torch.stack([
        _reference_logits(model, prompts[0][:4])[-1],
        _reference_logits(model, prompts[1][:16])[-1],
        _reference_logits(model, prompts[1][:17])[-1],
        _reference_logits(model, prompts[2][:29])[-1],
    ])
    torch.testing.assert_close(mixed, expected, rtol=1e-4, atol=1e-4)
