"""`flint bench engine`'s GGUF conversion: llama.cpp runs the converted checkpoint as flint runs the original.

Needs the optional `llamacpp` extra (llama-cpp-python, a source build); without it there is nothing to
compare against and the module is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

llama_cpp = pytest.importorskip("llama_cpp")

from flint.bench.engine_llamacpp import LlamaCppDecoder  # noqa: E402
from flint.bench.gguf import write_llama_gguf  # noqa: E402
from flint.engine.demo import make_checkpoint  # noqa: E402
from flint.engine.loader import load_model  # noqa: E402
from flint.engine.model.dense import DenseAttention  # noqa: E402


@pytest.fixture(scope="module")
def llama_tied(tmp_path_factory, bytelevel_tokenizer_file):
    return make_checkpoint(tmp_path_factory.mktemp("llama-gguf"), layers=2, hidden=64, heads=4, kv_heads=2,
                           intermediate=96, vocab_size=512, max_position_embeddings=256, seed=9,
                           tokenizer_from=bytelevel_tokenizer_file.parent, architecture="llama")


def test_llamacpp_logits_on_the_converted_file_match_flint(llama_tied, tmp_path):
    gguf = write_llama_gguf(llama_tied, tmp_path / "model-f32.gguf")
    prompt = torch.randint(3, 500, (12,), generator=torch.Generator().manual_seed(1)).tolist()
    model = load_model(llama_tied)
    attn = DenseAttention.for_model(model)
    attn.add_sequence("s", 64)
    hidden = model(torch.tensor(prompt), attn.begin_step([("s", len(prompt))]), attn)
    expected = model.compute_logits(hidden[-1:])[0]                     # [V]
    dec = LlamaCppDecoder(gguf, threads=1, context=64)
    try:
        dec.llm.reset()
        dec.llm.eval(prompt)
        # without logits_all llama.cpp keeps only the last token's logits, in its context
        got = torch.tensor(np.ctypeslib.as_array(dec.llm._ctx.get_logits(), shape=(dec.llm.n_vocab(),)).copy())
    finally:
        dec.close()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=2e-3, rtol=1e-3)
