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


def _keystrokes(session_id: str, count: int = 20):
    """A session typing 3 tokens per keystroke after a 1,000-token document; yields (request, match)."""
    kv = PagedKVCache(num_layers=1, num_kv_heads=1, head_dim=4, dtype=torch.float32, budget_bytes=64 * 4096,
                      block_size=4)
    doc = np.arange(1, 1001)
    for k in range(count):
        ids = np.concatenate([doc, np.arange(5000, 5000 + 3 * k)])
        req = Request(request_id=f"k{k}", prompt_ids=ids, sampling=SamplingParams(), max_tokens=4, namespace="m",
                      interactive=True, speculate=False, arrival_s=0.0, arrival_mono=0.0, session_id=session_id)
        match = kv.match(req)
        assert kv.admit(req, match, req.num_tokens + 1)
        yield req, match
        req.num_computed = req.num_tokens
        req.append([7])                                   # its output token diverges from the next prompt
        kv.release(req)
    assert kv.all_free_after_clearing()


def test_a_session_continuing_its_document_matches_from_where_it_ended_not_from_the_root():
    expected = None
    for k, (req, match) in enumerate(_keystrokes("s1")):
        assert req.num_computed == (0 if k == 0 else req.prompt_len - 3)
        if expected is not None:                          # the cached prefix keeps its slots
            assert req.slot_map[: len(expected)].tolist() == expected.tolist()
        if k >= 2:
            assert len(match.parts) == 1                  # the hint's run: no walk over the edit history
        expected = req.slot_map[: req.prompt_len].clone()


def test_without_a_session_id_the_documents_first_tokens_find_the_hint():
    parts = [len(match.parts) for _, match in _keystrokes("")]
    assert parts[2:] == [1] * (len(parts) - 2)


def test_a_hint_that_no_longer_fits_the_prompt_falls_back_to_the_walk():
    kv = PagedKVCache(num_layers=1, num_kv_heads=1, head_dim=4, dtype=torch.float32, budget_bytes=64 * 4096,
                      block_size=4)

    def run(ids, rid):
        req = Request(request_id=rid, prompt_ids=ids, sampling=SamplingParams(), max_tokens=4, namespace="m",
                      interactive=True, speculate=False, arrival_s=0.0, arrival_mono=0.0, session_id="same")
        assert kv.admit(req, kv.match(req), req.num_tokens + 1)
        cached = req.num_computed
        req.num_computed = req.num_tokens
        kv.release(req)
        return cached

    base = np.arange(1, 301)
    assert run(base, "a") == 0
    edited = base.copy()
    edited[100] = 9999                                   # an edit before the hint's end: the hint is stale
    assert run(edited, "b") == 100                       # matched up to the edit, from the root
    assert run(np.concatenate([base, [7, 8]]), "c") == 300   # the first document is still cached
    assert kv.all_free_after_clearing()
