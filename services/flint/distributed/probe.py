"""Greedy decoding straight over a `ModelRunner`, without the scheduler.

Used to prove that N shards give the same tokens as one shard, and by
`flint bench cluster` to time one step through each runner: the scheduler's
own cost is the same for every runner, so leaving it out isolates what
sharding adds.
"""

from __future__ import annotations

import time

import torch

from flint.engine.runner import ModelRunner, StepBatch


def greedy_generate(runner: ModelRunner, prompts: list[list[int]], max_new_tokens: int,
                    *, step_times_s: list[float] | None = None) -> list[list[int]]:
    """Prefill all prompts in one step, then decode them together; returns new tokens per prompt.

    Each sequence gets its own contiguous range of KV slots (the runner must
    have at least sum(len(p) + max_new_tokens) slots).
    """
    capacity = [len(p) + max_new_tokens for p in prompts]
    offsets = [sum(capacity[:i]) for i in range(len(prompts))]
    slots = [torch.arange(o, o + c, dtype=torch.int64) for o, c in zip(offsets, capacity)]
    keys = [f"seq{i}" for i in range(len(prompts))]
    out: list[list[int]] = [[] for _ in prompts]
    # Prefill: every prompt packed along T; logits of each prompt's last row.
    ids = torch.tensor([t for p in prompts for t in p], dtype=torch.int64)                 # [T]
    ends = torch.tensor([len(p) for p in prompts]).cumsum(0) - 1                          # [B]
    batch = StepBatch(ids, [(k, s, 0, len(p)) for k, s, p in zip(keys, slots, prompts)], ends)
    lengths = [len(p) for p in prompts]
    for step in range(max_new_tokens):
        t0 = time.perf_counter()
        logits = runner.execute(batch)                                                     # [B, V]
        if step_times_s is not None:
            step_times_s.append(time.perf_counter() - t0)
        nxt = logits.argmax(dim=-1)                                                        # [B]
        for i, tok in enumerate(nxt.tolist()):
            out[i].append(tok)
        batch = StepBatch(nxt.to(torch.int64),
                          [(k, s, n, 1) for k, s, n in zip(keys, slots, lengths)],
                          torch.arange(len(prompts)))
        lengths = [n + 1 for n in lengths]
    for k in keys:
        runner.release(k)
    return out
