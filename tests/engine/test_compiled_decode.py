"""compile=true: decode steps padded to batch-size buckets [1, 2, 4], compiled at engine start.

One compiled engine serves the module (compiling costs seconds); its compiler stance is
"fail_on_recompile", so any step that would compile after start-up raises. Every engine ends
with all KV blocks free.
"""

import pytest
import torch
from torch._dynamo.utils import counters

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine

pytestmark = pytest.mark.slow
BUCKETS = (1, 2, 4)
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def engines(demo_checkpoint):
    def make(**overrides) -> Engine:
        return Engine.from_config(EngineConfig.from_dict(
            dict(model=str(demo_checkpoint), kv_cache_bytes=16 << 20, block_size=8), **overrides))

    graphs_before = counters["stats"]["unique_graphs"]
    compiled = make(compile=True, compile_batch_sizes=list(BUCKETS))
    compiled.graphs_at_start = counters["stats"]["unique_graphs"] - graphs_before
    compiled.runner.compiled_decode.stance = "fail_on_recompile"
    eager = make()
    yield eager, compiled


@pytest.fixture(autouse=True)
def no_leaks(engines):
    yield
    for engine in engines:
        assert engine.no_leaks(), "KV blocks leaked"


def generate(engine: Engine, batch: int) -> list[list[int]]:
    """`batch` requests with different prompts, all prefilled in one step, then decoded together."""
    engine.recorded_outputs = {}
    for i in range(batch):
        engine.add_tokens(f"r{i}", [7 + i, 40 + 3 * i, 99, 5 + i, 300 - i][: 3 + i % 3], MAX_TOKENS)
    engine.run_until_done()
    return [engine.recorded_outputs[f"r{i}"] for i in range(batch)]


def test_buckets_are_compiled_at_start_and_the_first_requests_compile_nothing(engines):
    eager, compiled = engines
    decode = compiled.runner.compiled_decode
    assert eager.runner.compiled_decode is None                     # compile=false: the eager fallback
    assert compiled.runner.attn.native                              # the op runs the in-place kernel
    assert decode.compiled_buckets == BUCKETS and set(decode.compile_s) == set(BUCKETS)
    assert compiled.graphs_at_start == len(BUCKETS)                 # one whole-forward graph per bucket
    graphs = counters["stats"]["unique_graphs"]
    generate(compiled, 1)                                           # the engine's first request
    generate(compiled, 3)
    assert counters["stats"]["unique_graphs"] == graphs
    assert decode.steps[1] > 0 and decode.steps[4] > 0              # the compiled graphs ran


@pytest.mark.parametrize("batch, bucket", [(1, 1), (2, 2), (3, 4), (4, 4), (5, 0)],
                         ids=["bucket-1", "bucket-2", "padded-3-to-4", "bucket-4", "above-largest-eager"])
def test_compiled_decode_gives_the_eager_output_token_for_token(engines, batch, bucket):
    eager, compiled = engines
    steps = compiled.runner.compiled_decode.steps[bucket]
    assert generate(compiled, batch) == generate(eager, batch)
    assert compiled.runner.compiled_decode.steps[bucket] >= steps + MAX_TOKENS - 1


def test_pad_rows_write_no_kv_slot_and_leave_the_allocator_alone(engines):
    _, compiled = engines
    decode, runner, allocator = compiled.runner.compiled_decode, compiled.runner, compiled.kv.allocator
    reqs = [compiled.add_tokens(f"p{i}", [11 + i, 22, 33 + i], MAX_TOKENS) for i in range(3)]
    compiled.step()                                                 # prefill of all three
    assert all(r.num_computed == r.prompt_len for r in reqs)
    written = {int(r.slots[r.num_computed]) for r in reqs}          # the one slot each real row writes
    k, v = runner.attn.k_cache.clone(), runner.attn.v_cache.clone()  # [L, S, KV, D]
    refs = [allocator.refcount(b) for b in range(allocator.num_blocks)]
    padded_steps = decode.steps[4]
    compiled.step()                                                 # decode: 3 rows padded to bucket 4
    assert decode.steps[4] == padded_steps + 1
    changed = ((runner.attn.k_cache != k) | (runner.attn.v_cache != v)).flatten(2).any(-1).any(0)  # [S]
    assert set(torch.nonzero(changed).flatten().tolist()) == written
    assert [allocator.refcount(b) for b in range(allocator.num_blocks)] == refs
    compiled.run_until_done()
