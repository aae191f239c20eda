"""The synchronous engine core on a tiny demo-format checkpoint: outputs, caching, aborts, limits.

Every test ends by checking that, with the prefix cache cleared, all KV blocks are free.
"""

import pytest

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.types import Delta, Final, FinishReason, GenerateRequest, RequestKind, SamplingParams
from flint.errors import InvalidArgument

CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"


@pytest.fixture
def make_engine(demo_checkpoint):
    engines = []

    def make(**overrides) -> Engine:
        config = EngineConfig.from_dict(dict(model=str(demo_checkpoint), kv_cache_bytes=16 << 20,
                                             block_size=8), **overrides)
        engines.append(Engine.from_config(config))
        return engines[-1]

    yield make
    for engine in engines:
        assert engine.no_leaks(), "KV blocks leaked"


def run(engine: Engine, *requests: GenerateRequest) -> dict[str, tuple[list[int], Final, str]]:
    engine.recorded_outputs = {}
    for r in requests:
        engine.add_request(r)
    events = engine.run_until_done()
    out = {}
    for r in requests:
        mine = [e for e in events if e.request_id == r.request_id]
        final = mine[-1]
        assert isinstance(final, Final)
        text = "".join(e.text for e in mine if isinstance(e, Delta))
        seqs = [e.seq for e in mine]
        assert seqs == list(range(r.seq_offset + 1, r.seq_offset + 1 + len(mine)))
        out[r.request_id] = (engine.recorded_outputs[r.request_id], final, text)
    return out


def greedy(rid: str, prefix: str = CODE, n: int = 24, **kw) -> GenerateRequest:
    return GenerateRequest(rid, prefix=prefix, sampling=SamplingParams(max_tokens=n, **kw))


def test_greedy_output_is_identical_across_runs_and_engines(make_engine):
    a = run(make_engine(), greedy("r"))["r"]
    b = run(make_engine(), greedy("r"))["r"]
    assert a[0] == b[0] and a[2] == b[2]
    assert a[1].completion_tokens == 24 and a[1].finish_reason is FinishReason.LENGTH


def test_batched_equals_unbatched_greedy(make_engine):
    prompts = [CODE, CODE[:30], "import os\n" * 5, CODE + CODE]
    alone = [run(make_engine(), greedy(f"r{i}", p))[f"r{i}"][0] for i, p in enumerate(prompts)]
    together = run(make_engine(), *[greedy(f"r{i}", p) for i, p in enumerate(prompts)])
    assert [together[f"r{i}"][0] for i in range(len(prompts))] == alone


def test_chunked_prefill_gives_the_same_output_as_one_shot(make_engine):
    long_prompt = CODE * 8
    one_shot = run(make_engine(prefill_tokens_per_step=4096), greedy("r", long_prompt))["r"][0]
    chunked = run(make_engine(prefill_tokens_per_step=16), greedy("r", long_prompt))["r"][0]
    assert chunked == one_shot


def test_speculative_equals_plain_greedy_and_counts_acceptance(make_engine):
    edit = GenerateRequest("e", kind=RequestKind.EDIT, code=CODE * 3, instruction="keep it",
                           sampling=SamplingParams(max_tokens=60))
    plain = run(make_engine(speculation="off"), edit)["e"]
    spec = run(make_engine(speculation="edit"), edit)["e"]
    assert spec[0] == plain[0] and spec[2] == plain[2]
    assert spec[1].draft_tokens > 0 and 0 <= spec[1].accepted_draft_tokens <= spec[1].draft_tokens
    assert plain[1].draft_tokens == 0


def test_speculative_sampling_is_seeded_and_reproducible(make_engine):
    edit = GenerateRequest("e", kind=RequestKind.EDIT, code=CODE * 3, instruction="x",
                           sampling=SamplingParams(max_tokens=40, temperature=0.7, seed=11))
    a = run(make_engine(speculation="edit"), edit)["e"]
    b = run(make_engine(speculation="edit"), edit)["e"]
    assert a[0] == b[0]


def test_speculative_rejection_sampling_with_top_k_1_equals_greedy(make_engine):
    """top_k=1 makes the target distribution a point mass: the sampled path must then match greedy."""
    sampled = GenerateRequest("e", kind=RequestKind.EDIT, code=CODE * 3, instruction="x",
                              sampling=SamplingParams(max_tokens=40, temperature=0.7, top_k=1, seed=3))
    greedy_edit = GenerateRequest("e", kind=RequestKind.EDIT, code=CODE * 3, instruction="x",
                                  sampling=SamplingParams(max_tokens=40))
    spec = run(make_engine(speculation="edit"), sampled)["e"]
    plain = run(make_engine(speculation="off"), greedy_edit)["e"]
    assert spec[0] == plain[0] and spec[1].accepted_draft_tokens > 0


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(make_engine):
    req = greedy("s", n=30, temperature=0.9, top_p=0.9, seed=1234)
    alone = run(make_engine(), req)["s"][0]
    other = greedy("noise", n=30, temperature=1.0)
    batched = run(make_engine(), req, other)["s"][0]
    assert alone == batched
    different_seed = run(make_engine(), greedy("s", n=30, temperature=0.9, top_p=0.9, seed=99))["s"][0]
    assert different_seed != alone


def test_prefix_cache_hit_prefills_only_new_tokens(make_engine):
    engine = make_engine()
    first = run(engine, greedy("k1", CODE, n=4))["k1"][1]
    extended = run(engine, greedy("k2", CODE + "    def norm(self):", n=4))["k2"][1]
    assert first.cached_prompt_tokens == 0
    # The extended prompt reuses every cached token of the first prompt except where
    # the FIM template's tail differs: at least the whole old prefix text is cached.
    assert extended.cached_prompt_tokens >= first.prompt_tokens - 4
    assert engine.metrics.cache_hit._value.get() == extended.cached_prompt_tokens
    # Another tenant never sees it.
    other = run(engine, GenerateRequest("k3", prefix=CODE, cache_namespace="tenant-b",
                                        sampling=SamplingParams(max_tokens=2)))["k3"][1]
    assert other.cached_prompt_tokens == 0


def test_prefix_cache_off_prefills_everything(make_engine):
    engine = make_engine(prefix_cache=False)
    run(engine, greedy("k1", n=2))
    assert run(engine, greedy("k2", n=2))["k2"][1].cached_prompt_tokens == 0


def test_abort_mid_prefill_frees_everything(make_engine):
    engine = make_engine(prefill_tokens_per_step=16)
    engine.add_request(greedy("long", CODE * 10, n=10))
    engine.step()
    req = engine.scheduler.running[0]
    assert req.in_prefill and engine.kv.allocator.num_used > 0
    assert engine.abort("long")
    events = engine.step()
    assert [type(e) for e in events] == [Final] and events[0].finish_reason is FinishReason.INTERRUPTED
    assert not engine.has_work()
    assert not engine.abort("long")                         # unknown once finished


def test_abort_mid_decode_frees_everything_and_no_delta_follows(make_engine):
    engine = make_engine()
    engine.add_request(greedy("d", n=200))
    for _ in range(5):
        engine.step()
    engine.abort("d")
    events = engine.step()
    assert len(events) == 1 and events[0].finish_reason is FinishReason.INTERRUPTED
    assert events[0].completion_tokens == 5       # prefill step + 4 decode steps
    assert engine.run_until_done() == []


def test_stop_string_and_max_tokens_end_without_extra_steps(make_engine):
    # The tiny random model prints text only when sampling; a seed makes it repeatable.
    sampled = dict(n=12, temperature=1.0, seed=1)
    probe = run(make_engine(), greedy("p", "def add(a, b):\n", **sampled))["p"]
    assert probe[1].finish_reason is FinishReason.LENGTH and probe[1].completion_tokens == 12
    stop = probe[2][len(probe[2]) // 2 :][:2]
    assert stop, "the tiny model printed no text to stop on"
    engine = make_engine()
    engine.add_request(greedy("s", "def add(a, b):\n", stop=(stop,), **sampled))
    steps, events = 0, []
    while engine.has_work():
        events += engine.step()
        steps += 1
    final = events[-1]
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert final.finish_reason is FinishReason.STOP
    assert text == probe[2][: probe[2].index(stop)]
    assert steps == final.completion_tokens < 12             # one step per token, none wasted


def test_seq_offset_and_timings(make_engine):
    engine = make_engine()
    final = run(engine, GenerateRequest("o", prefix=CODE, seq_offset=41,
                                        sampling=SamplingParams(max_tokens=3)))["o"][1]
    t = final.timings
    assert final.seq > 41
    assert 0 <= t.queue_ms <= t.first_token_ms <= t.total_ms and t.prefill_ms >= 0 and t.decode_ms >= 0


def test_validation_errors_say_what_to_change(make_engine):
    engine = make_engine()
    with pytest.raises(InvalidArgument, match="context limit is 4096"):
        engine.add_request(GenerateRequest("x", prefix="word " * 5000))
    with pytest.raises(InvalidArgument, match="top_p"):
        engine.add_request(GenerateRequest("y", prefix="a", sampling=SamplingParams(top_p=1.5)))
    with pytest.raises(InvalidArgument, match="unknown key"):
        EngineConfig.from_dict({"kv_cache_bytez": 1})


def test_prefix_cache_entries_do_not_count_as_kv_in_use_for_load(make_engine):
    """A finished request's prompt stays in the prefix cache, but those blocks are evictable: the load that
    admission control and autoscaling read must not call an idle replica full."""
    engine = make_engine()
    run(engine, greedy("kv-load", n=4))
    assert engine.kv.used_fraction() > 0          # blocks held by the prefix cache
    assert engine.load().kv_used_fraction == 0.0  # none held by a request
    engine.add_request(greedy("kv-load-2", prefix=CODE * 3, n=64))
    engine.step()
    assert 0.0 < engine.load().kv_used_fraction <= engine.kv.used_fraction()
    engine.run_until_done()


def test_inter_token_latency_has_one_sample_per_request_per_decode_step(make_engine):
    engine = make_engine()
    out = run(engine, greedy("a", n=5), greedy("b", CODE[:40], n=9), greedy("c", "import os\n", n=13))
    samples = {s.name: s.value for family in engine.metrics.registry.collect()
               if family.name == "flint_engine_inter_token_latency_seconds" for s in family.samples}
    # The first token of each comes from its prefill; every later one from a decode step, one token each.
    assert samples["flint_engine_inter_token_latency_seconds_count"] == sum(
        final.completion_tokens - 1 for _, final, _ in out.values()) == 4 + 8 + 12
    assert samples["flint_engine_inter_token_latency_seconds_sum"] > 0
