"""flint's model (through the loader and DenseAttention) gives transformers' logits, float32."""

from __future__ import annotations

import pytest
import torch

from flint.engine.loader import load_model
from flint.engine.model.dense import DenseAttention
from support.checkpoints import CHECKPOINT_FIXTURES

ATOL = 2e-4


def hf_logits(path, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()  # [T, V]


def random_ids(n: int, seed: int, vocab: int = 500) -> list[int]:
    return torch.randint(3, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("fixture", CHECKPOINT_FIXTURES)
def test_prefill_then_decode_logits_match_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    ids = random_ids(14, seed=len(fixture))
    expected = hf_logits(path, ids)
    model = load_model(path)
    attn = DenseAttention.for_model(model)
    attn.add_sequence("s", max_tokens=64)
    prefill = 10
    positions = attn.begin_step([("s", prefill)])
    hidden = model(torch.tensor(ids[:prefill]), positions, attn)
    got = [model.compute_logits(hidden)]
    for i in range(prefill, len(ids)):                         # decode steps, one token each
        positions = attn.begin_step([("s", 1)])
        got.append(model.compute_logits(model(torch.tensor([ids[i]]), positions, attn)))
    got = torch.cat(got)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)


def test_packed_batch_of_sequences_matches_each_alone(llama_checkpoint):
    model = load_model(llama_checkpoint)
    a, b = random_ids(9, seed=1), random_ids(5, seed=2)
    expected_a, expected_b = hf_logits(llama_checkpoint, a), hf_logits(llama_checkpoint, b)
    attn = DenseAttention.for_model(model)
    attn.add_sequence("a", 32)
    attn.add_sequence("b", 32)
    # step 1: prefill a[:6] and b[:3] together; step 2: a decodes, b prefills two more; step 3: both decode.
    steps = [[("a", 6), ("b", 3)], [("a", 1), ("b", 2)], [("a", 1), ("b", 0)], [("a", 1)]]
    done = {"a": 0, "b": 0}
    rows = {"a": [], "b": []}
    for step in steps:
        positions = attn.begin_step(step)
        ids = [t for seq, n in step for t in (a if seq == "a" else b)[done[seq]: done[seq] + n]]
        logits = model.compute_logits(model(torch.tensor(ids), positions, attn))
        offset = 0
        for seq, n in step:
            rows[seq].append(logits[offset: offset + n])
            offset += n
            done[seq] += n
    torch.testing.assert_close(torch.cat(rows["a"]), expected_a, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(torch.cat(rows["b"]), expected_b, atol=ATOL, rtol=1e-4)


def test_truncate_rolls_back_rejected_tokens(qwen2_checkpoint):
    model = load_model(qwen2_checkpoint)
    ids = random_ids(8, seed=3)
    attn = DenseAttention.for_model(model)
    attn.add_sequence("s", 32)
    model(torch.tensor(ids[:6] + [7, 8]), attn.begin_step([("s", 8)]), attn)  # 2 wrong "draft" tokens
    attn.truncate("s", 6)
    got = model.compute_logits(model(torch.tensor(ids[6:]), attn.begin_step([("s", 2)]), attn))
    torch.testing.assert_close(got, hf_logits(qwen2_checkpoint, ids)[6:], atol=ATOL, rtol=1e-4)


def test_bfloat16_load_runs_close_to_float32(qwen2_checkpoint):
    ids = random_ids(6, seed=4)
    model = load_model(qwen2_checkpoint, dtype="bf16")
    assert model.layers[0].qkv.weight.dtype == torch.bfloat16
    attn = DenseAttention.for_model(model)
    attn.add_sequence("s", 16)
    got = model.compute_logits(model(torch.tensor(ids), attn.begin_step([("s", 6)]), attn))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, hf_logits(qwen2_checkpoint, ids), atol=0.1, rtol=0.05)
