"""A whole decoder layer in one native call (`model/linear.py` decode_layer) equals the layer run call by call.

Greedy outputs of the engine with the fused layer and with it turned off are the same tokens, for fp32 and
int4 weights, with and without speculative verification (several rows per sequence); and the fused call is
what ran (for int4 where the tiled kernel is: AVX2 or AVX512-VNNI CPUs; on others its layers run call by call).
"""

from __future__ import annotations

import pytest

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.model import linear, llama
from flint.engine.quant import modules as quant_modules
from flint.engine.types import GenerateRequest, RequestKind, SamplingParams

CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"


def _outputs(checkpoint, **overrides) -> list[int]:
    engine = Engine.from_config(EngineConfig.from_dict(dict(model=str(checkpoint), kv_cache_bytes=16 << 20,
                                                            block_size=8, **overrides)))
    engine.recorded_outputs = {}
    for i, request in enumerate((
            GenerateRequest("c", kind=RequestKind.COMPLETE, prefix=CODE, sampling=SamplingParams(max_tokens=24)),
            GenerateRequest("e", kind=RequestKind.EDIT, code=CODE * 2, instruction="keep it",
                            sampling=SamplingParams(max_tokens=24)))):
        engine.add_request(request)
    engine.run_until_done()
    assert engine.no_leaks()
    return [engine.recorded_outputs[r] for r in ("c", "e")]


@pytest.mark.parametrize("quantization", ["none", "int4"])
@pytest.mark.parametrize("speculation", ["off", "edit"])
def test_the_fused_layer_gives_the_tokens_of_the_layer_call_by_call(demo_checkpoint, monkeypatch, quantization,
                                                                       speculation):
    # int4 takes the fused layer on the tiled kernel; without it (no AVX2) its layers run call by call
    fused_expected = quantization == "none" or quant_modules.kernel().tiled_on()
    fused_calls = []
    real = linear.decode_layer

    def counting(*args):
        y = real(*args)
        fused_calls.append(y is not None)
        return y

    monkeypatch.setattr(llama, "decode_layer", counting)
    fused = _outputs(demo_checkpoint, quantization=quantization, speculation=speculation)
    assert any(fused_calls) == fused_expected, "the fused layer ran where its kernels are"
    monkeypatch.setattr(llama, "decode_layer", lambda *args: None)
    assert _outputs(demo_checkpoint, quantization=quantization, speculation=speculation) == fused
