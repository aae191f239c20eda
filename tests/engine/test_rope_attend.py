"""The fused decode-layer attention (`PagedAttention.attend_qkv`, kernel `rope_attend`) equals the op-by-op path.

The op-by-op path is what every other backend and device runs: `apply_rotary` on the q/k heads of the fused
QKV output, then `attn(layer, q, k, v)` (index_copy_ of k/v into their slots, attention). The fused call must
give the same attention output AND leave the same keys and values in the cache, for decode rows, short
extends and a long prefill chunk in one step, with grouped-query heads and a sliding window.
"""

import pytest
import torch

from flint.engine.model.config import ModelConfig
from flint.engine.model.rope import Rotary, apply_rotary
from flint.engine.paged_attention import PagedAttention, native_kernel
from test_paged_attention_in_place import BLOCK, _slot_maps


@pytest.fixture(scope="module", autouse=True)
def kernel_builds():
    assert native_kernel() is not None, "the native paged attention kernel must build on the test machine"


def _config(heads: int, kv: int, d: int) -> ModelConfig:
    return ModelConfig(model_type="llama", vocab_size=64, hidden_size=heads * d, intermediate_size=64, num_layers=2,
                       num_heads=heads, num_kv_heads=kv, head_dim=d, rms_norm_eps=1e-5, rope_theta=10_000.0,
                       rope_scaling=None, max_position_embeddings=1 << 17, tie_word_embeddings=False,
                       qkv_bias=False, o_bias=False, sliding_window=None, bos_token_id=None, eos_token_ids=())


@pytest.mark.parametrize("heads,kv,d,window", [(8, 4, 64, None), (4, 4, 32, None), (6, 2, 128, 24)])
def test_fused_rotary_write_and_attention_equal_the_op_by_op_path(heads, kv, d, window):
    gen = torch.Generator().manual_seed(heads * 100 + d)
    # (cached, new) per sequence: decodes, a short extend, a long prefill chunk (Python side), at layer 1
    shape = [(37, 1), (0, 1), (90, 5), (20, 40), (130, 1)]
    blocks = sum(-(-(c + n) // BLOCK) for c, n in shape)
    maps, num_slots = _slot_maps([c + n for c, n in shape], blocks, gen), blocks * BLOCK
    rotary = Rotary(_config(heads, kv, d), "cpu", torch.float32)
    caches = {}
    for name in ("fused", "ops"):
        k = torch.randn(2, num_slots, kv, d, generator=torch.Generator().manual_seed(7))
        v = torch.randn(2, num_slots, kv, d, generator=torch.Generator().manual_seed(8))
        caches[name] = PagedAttention(k, v, num_heads=heads, sliding_window=window, native=True)
    t = sum(n for _, n in shape)
    qkv = torch.randn(t, (heads + 2 * kv) * d, generator=gen)

    outs = {}
    for name, attn in caches.items():
        positions = attn.begin_step([(s, c, n) for s, (c, n) in zip(maps, shape)])
        rotation = rotary.rotation(positions)
        if name == "fused":
            outs[name] = attn.attend_qkv(1, qkv.clone(), rotation)
        else:
            qk = apply_rotary(qkv[:, : (heads + kv) * d].view(t, heads + kv, d), rotation)
            v_new = qkv[:, (heads + kv) * d :].view(t, kv, d)
            outs[name] = attn(1, qk[:, :heads], qk[:, heads:], v_new)

    assert outs["fused"] is not None
    torch.testing.assert_close(outs["fused"], outs["ops"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(caches["fused"].k_cache, caches["ops"].k_cache, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(caches["fused"].v_cache, caches["ops"].v_cache, rtol=0, atol=0)


def test_native_rotation_table_equals_the_torch_formula():
    config = _config(8, 4, 64)
    rotary = Rotary(config, "cpu", torch.float32)
    positions = torch.tensor([0, 1, 17, 4095, 131_071], dtype=torch.int64)
    table = rotary.rotation(positions)
    angles = positions.float()[:, None, None] * rotary.inv_freq
    expected = torch.stack((angles.cos(), angles.sin()), dim=-1)
    assert table.shape == expected.shape == (5, 1, 32, 2)
    torch.testing.assert_close(table, expected, rtol=1e-5, atol=1e-5)


def test_other_dtypes_take_the_op_by_op_path():
    k = torch.zeros(1, 32, 2, 16, dtype=torch.bfloat16)
    attn = PagedAttention(k, k.clone(), num_heads=2, native=True)
    attn.begin_step([(torch.arange(4), 3, 1)])
    qkv = torch.randn(1, 6 * 16).to(torch.bfloat16)
    assert attn.attend_qkv(0, qkv, torch.randn(1, 1, 8, 2)) is None
