"""Per-request engine work that must not grow with the whole context (issue #10, Must-have 5)."""

import numpy as np
import torch

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.kv_cache import PagedKVCache
from flint.engine.request import Request
from flint.engine.types import SamplingParams


def test_speculation_indexes_only_the_prompts_tail(demo_checkpoint):
    engine = Engine.from_config(EngineConfig(model=str(demo_checkpoint), kv_cache_bytes=16 << 20, block_size=8,
                                             speculation="all", spec_prompt_window_tokens=32))
    req = engine.add_tokens("long", list(range(10, 400)), 3, speculate=True)
    engine.step()
    assert req.ngram is not None and len(req.ngram._tokens) == 32 + req.num_output
    engine.run_until_done()
    assert engine.no_leaks()


def test_a_session_continuing_its_document_gets_its_cached_slots_in_one_copy():
    kv = PagedKVCache(num_layers=1, num_kv_heads=1, head_dim=4, dtype=torch.float32, budget_bytes=64 * 4096,
                      block_size=4)
    doc = np.arange(1, 1001)

    def request(ids, rid):
        return Request(request_id=rid, prompt_ids=ids, sampling=SamplingParams(), max_tokens=4, namespace="m",
                       interactive=True, speculate=False, arrival_s=0.0, arrival_mono=0.0)

    expected = None
    for k in range(20):                                  # 20 keystrokes, each adding 3 tokens
        ids = np.concatenate([doc, np.arange(5000, 5000 + 3 * k)])
        req = request(ids, f"k{k}")
        match = kv.match(req)
        assert kv.admit(req, match, req.num_tokens + 1)
        assert req.num_computed == (0 if k == 0 else len(ids) - 3)
        if expected is not None:                          # the cached prefix keeps its slots, whatever the path
            assert req.slot_map[: len(expected)].tolist() == expected.tolist()
        req.num_computed = req.num_tokens
        expected = req.slot_map[: req.num_tokens].clone()
        kv.release(req)
    assert kv.all_free_after_clearing()
