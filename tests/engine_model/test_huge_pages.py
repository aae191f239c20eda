"""Weights moved into transparent huge pages at load (flint.engine.hugepages) decode exactly as before.

The move copies every large parameter, buffer and quantized tile into one 2 MiB-aligned mapping advised
MADV_HUGEPAGE; the kernels' bound objects are made again over the copies. Greedy tokens must equal those
of the same checkpoint loaded without the move, and FLINT_HUGE_PAGES=0 must keep the weights where they
were loaded.
"""

from __future__ import annotations

import pytest

from flint.engine import hugepages
from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.loader import load_model
from flint.engine.quant.modules import QuantLinear
from flint.engine.types import GenerateRequest, RequestKind, SamplingParams

# The move needs the kernel's transparent huge pages (Linux, THP not "never"); where they are off the weights
# stay where they were loaded, which the last test checks on every machine.
needs_thp = pytest.mark.skipif(not hugepages.available(),
                               reason="this kernel has transparent huge pages off (or FLINT_HUGE_PAGES=0)")

CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"


def _tokens(checkpoint, quantization: str) -> list[int]:
    engine = Engine.from_config(EngineConfig.from_dict(dict(model=str(checkpoint), kv_cache_bytes=16 << 20,
                                                            block_size=8, quantization=quantization)))
    engine.recorded_outputs = {}
    engine.add_request(GenerateRequest("c", kind=RequestKind.COMPLETE, prefix=CODE,
                                       sampling=SamplingParams(max_tokens=24)))
    engine.run_until_done()
    return engine.recorded_outputs["c"]


def _in_region(tensor, region_start: int, region_end: int) -> bool:
    return region_start <= tensor.data_ptr() < region_end


@needs_thp
@pytest.mark.parametrize("quantization", ["none", "int8", "int4"])
def test_moved_weights_decode_the_same_tokens(qwen2_checkpoint, monkeypatch, quantization):
    monkeypatch.setenv("FLINT_HUGE_PAGES", "0")
    before = _tokens(qwen2_checkpoint, quantization)
    monkeypatch.setenv("FLINT_HUGE_PAGES", "1")
    monkeypatch.setattr(hugepages, "MIN_TENSOR_BYTES", 1)   # the test model's tensors are all small
    assert _tokens(qwen2_checkpoint, quantization) == before


@needs_thp
def test_every_large_weight_and_tile_moves_into_one_aligned_mapping(qwen2_checkpoint, monkeypatch):
    monkeypatch.setattr(hugepages, "MIN_TENSOR_BYTES", 1)
    moved = []
    real = hugepages.copy_to_huge_pages

    def recording(tensors, placed=None):
        copies = real(tensors, placed)
        moved.extend(copies)
        return copies

    monkeypatch.setattr(hugepages, "copy_to_huge_pages", recording)
    model = load_model(qwen2_checkpoint, quantization="int8")
    assert moved, "nothing was moved"
    start = min(t.data_ptr() for t in moved)
    end = max(t.data_ptr() + t.numel() * t.element_size() for t in moved)
    assert start % hugepages.HUGE_PAGE_BYTES == 0, "the mapping's first tensor starts on a 2 MiB boundary"
    for name, p in model.named_parameters():
        assert _in_region(p, start, end), f"{name} was not moved"
    for module in model.modules():
        if isinstance(module, QuantLinear) and module._tiled is not None:
            assert _in_region(module._tiled.data, start, end) and _in_region(module._tiled.scale, start, end)


def test_switched_off_the_weights_stay_where_they_were_loaded(qwen2_checkpoint, monkeypatch):
    monkeypatch.setenv("FLINT_HUGE_PAGES", "0")
    monkeypatch.setattr(hugepages, "MIN_TENSOR_BYTES", 1)
    assert not hugepages.available()
    assert hugepages.move_weights(load_model(qwen2_checkpoint)) == 0
