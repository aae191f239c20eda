"""The longest prompt CI affords in seconds: chunked prefill through the paged cache, end to end."""

import pytest

from flint.engine.config import EngineConfig
from flint.engine.demo import make_checkpoint
from flint.engine.engine import Engine
from flint.engine.types import GenerateRequest, SamplingParams

LONG_TOKENS = 16_384


@pytest.fixture(scope="module")
def long_checkpoint(tmp_path_factory, bytelevel_tokenizer_file):
    return make_checkpoint(tmp_path_factory.mktemp("long"), layers=2, hidden=64, heads=4, kv_heads=2,
                           intermediate=128, vocab_size=512, max_position_embeddings=32_768, seed=9,
                           tokenizer_from=bytelevel_tokenizer_file.parent)


@pytest.mark.slow
def test_long_prompt_chunked_equals_one_shot(long_checkpoint):
    prefix = "".join(f"value_{i} = compute({i}, {i * 7 % 13})\n" for i in range(1100))
    outputs = {}
    for budget in (2048, 32_768):
        engine = Engine.from_config(EngineConfig(model=str(long_checkpoint), kv_cache_bytes=64 << 20,
                                                 prefill_tokens_per_step=budget, num_threads=1))
        engine.recorded_outputs = {}
        req = engine.prepare(GenerateRequest("long", prefix=prefix, sampling=SamplingParams(max_tokens=8)))
        assert req.prompt_len >= LONG_TOKENS
        engine.add(req)
        final = engine.run_until_done()[-1]
        assert final.prompt_tokens == req.prompt_len and final.completion_tokens == 8
        outputs[budget] = engine.recorded_outputs["long"]
        assert engine.no_leaks()
    assert outputs[2048] == outputs[32_768]
