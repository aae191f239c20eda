"""The engine on quantized weights: generation, speculative verification, the full serving stack."""

from __future__ import annotations

import re
import signal

import pytest

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.types import Delta, GenerateRequest, RequestKind, SamplingParams
from support.serve_process import flint, flint_serve

CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"


def engine_for(checkpoint, **overrides) -> Engine:
    return Engine.from_config(EngineConfig.from_dict(dict(model=str(checkpoint), kv_cache_bytes=16 << 20,
                                                          block_size=8), **overrides))


def generate(engine: Engine, request: GenerateRequest):
    """(output token ids, Final, streamed text)"""
    engine.recorded_outputs = {}
    engine.add_request(request)
    events = engine.run_until_done()
    assert engine.no_leaks()
    text = "".join(e.text for e in events if isinstance(e, Delta))
    return engine.recorded_outputs[request.request_id], events[-1], text


def test_speculative_verification_on_int4_gives_plain_greedy_output(trained_checkpoint):
    edit = GenerateRequest("e", kind=RequestKind.EDIT, code=CODE * 2, instruction="keep it",
                           sampling=SamplingParams(max_tokens=40))
    plain, _, _ = generate(engine_for(trained_checkpoint, quantization="int4", speculation="off"), edit)
    spec, final, _ = generate(engine_for(trained_checkpoint, quantization="int4", speculation="edit"), edit)
    assert spec == plain
    assert final.draft_tokens > 0


def complete_text(checkpoint, quantization: str) -> str:
    request = GenerateRequest("c", prefix="def fibonacci(n):\n", sampling=SamplingParams(max_tokens=12))
    return generate(engine_for(checkpoint, quantization=quantization, speculation="off"), request)[2]


@pytest.mark.slow
def test_flint_serve_with_quantization_int4_serves_the_int4_model(llama_checkpoint, tmp_path):
    expected = complete_text(llama_checkpoint, "int4")
    assert expected != complete_text(llama_checkpoint, "none"), "pick a prompt where int4 and fp32 differ"
    with flint_serve(tmp_path, "--model", str(llama_checkpoint), "--quantization", "int4", timeout_s=300,
                     config="ray_num_cpus = 1\n[engine]\nkv_cache_bytes = 16777216\nspeculation = \"off\"\n") as served:
        done = flint("complete", "def fibonacci(n):\n", "--max-tokens", "12", "--address", served.address, "--stats",
                     env=served.env)
        assert done.returncode == 0, done.stderr
        assert re.search(r"\[12 tokens, FINISH_REASON_LENGTH", done.stderr)
        assert done.stdout.rstrip("\n") == expected.rstrip("\n")   # the int4 model's greedy text
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=90) == 0


def test_sharded_replicas_refuse_quantization_before_starting_shards():
    from flint.distributed.config import ShardingConfig
    from flint.distributed.engine_factory import build_sharded_engine
    from flint.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="not supported on sharded replicas"):
        build_sharded_engine(EngineConfig(quantization="int4"), ShardingConfig(pp=2))
