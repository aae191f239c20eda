"""Config parsing and loader errors: clear NotFound / InvalidArgument naming what to fix."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from flint.engine.loader import load_model, parse_dtype
from flint.engine.model.config import ModelConfig
from flint.engine.model.rope import inverse_frequencies
from flint.errors import InvalidArgument, NotFound

BASE = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}


def test_transformers4_and_5_rope_spellings_give_the_same_frequencies():
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    old = ModelConfig.from_dict({**BASE, "rope_theta": 5e5, "rope_scaling": {"rope_type": "llama3", **scaling}})
    new = ModelConfig.from_dict({**BASE, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, **scaling}})
    legacy = ModelConfig.from_dict({**BASE, "rope_theta": 5e5, "rope_scaling": {"type": "llama3", **scaling}})
    assert old == new == legacy and old.rope_scaling.type == "llama3"
    assert torch.equal(inverse_frequencies(old), inverse_frequencies(new))
    plain = ModelConfig.from_dict({**BASE, "rope_theta": 5e5})
    assert plain.rope_scaling is None and not torch.equal(inverse_frequencies(plain), inverse_frequencies(old))


def test_yarn_attention_factor_follows_factor_and_mscale():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    c = ModelConfig.from_dict({**BASE, "model_type": "qwen2", "rope_scaling": yarn})
    assert c.rope_scaling.attention_factor == pytest.approx(0.1 * math.log(4.0) + 1.0)
    c = ModelConfig.from_dict({**BASE, "rope_scaling": {**yarn, "mscale": 1.0, "mscale_all_dim": 1.0}})
    assert c.rope_scaling.attention_factor == pytest.approx(1.0)


def test_qwen2_has_qkv_bias_llama_attention_bias_also_biases_o_proj():
    q = ModelConfig.from_dict({**BASE, "model_type": "qwen2"})
    assert (q.qkv_bias, q.o_bias, q.sliding_window) == (True, False, None)
    l = ModelConfig.from_dict({**BASE, "attention_bias": True, "head_dim": 32})
    assert (l.qkv_bias, l.o_bias, l.head_dim) == (True, True, 32)
    m = ModelConfig.from_dict({**BASE, "model_type": "mistral", "sliding_window": 4096, "eos_token_id": [2, 7]})
    assert (m.sliding_window, m.eos_token_ids) == (4096, (2, 7))


@pytest.mark.parametrize("patch, needle", [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported; supported: llama, qwen2, mistral"),
    ({"model_type": None}, "model_type None is not supported"),
    ({"hidden_size": -1}, "hidden_size must be a positive integer"),
    ({"num_hidden_layers": "2"}, "num_hidden_layers must be a positive integer"),
    ({"num_key_value_heads": 3}, "must be a multiple of num_key_value_heads"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 4.0}}, "rope type 'dynamic' is not supported; supported: default"),
    ({"rope_scaling": {"rope_type": "linear"}}, "factor must be a positive number"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not supported"),
    ({"model_type": "qwen2", "use_sliding_window": True}, "use_sliding_window"),
])
def test_malformed_or_unsupported_configs_name_the_field(patch, needle):
    with pytest.raises(InvalidArgument, match=needle.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig.from_dict({**BASE, **patch})


@pytest.fixture()
def broken(tmp_path, qwen2_checkpoint):
    path = tmp_path / "ckpt"
    shutil.copytree(qwen2_checkpoint, path)
    return path


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        load_model(tmp_path / "nope")
    with pytest.raises(NotFound, match="config.json not found"):
        load_model(tmp_path)


def test_config_that_is_not_json(broken):
    (broken / "config.json").write_text("{oops")
    with pytest.raises(InvalidArgument, match="config.json is not valid JSON"):
        load_model(broken)


def test_missing_weights_file(broken):
    (broken / "model.safetensors").unlink()
    with pytest.raises(NotFound, match="expected model.safetensors or model.safetensors.index.json"):
        load_model(broken)


def test_missing_tensor_is_named(broken):
    tensors = load_file(broken / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, broken / "model.safetensors")
    with pytest.raises(NotFound, match="'model.layers.1.mlp.up_proj.weight' not found in .*model.safetensors"):
        load_model(broken)


def test_tensor_shape_that_does_not_fit_config(broken):
    config = json.loads((broken / "config.json").read_text())
    config["intermediate_size"] = 96
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidArgument, match=r"gate_proj.weight' .* has shape \[128, 64\], config.json implies \[96, 64\]"):
        load_model(broken)


def test_sharded_index_naming_a_missing_file(tmp_path, llama_sharded_checkpoint):
    path = tmp_path / "ckpt"
    shutil.copytree(llama_sharded_checkpoint, path)
    victim = sorted(path.glob("model-*.safetensors"))[-1]
    victim.unlink()
    with pytest.raises(NotFound, match=f"weight file .*{victim.name} is missing"):
        load_model(path)


def test_untied_checkpoint_without_lm_head(broken):
    config = json.loads((broken / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotFound, match="lm_head.weight"):
        load_model(broken)


def test_dtype_choice():
    assert parse_dtype("bf16") is torch.bfloat16 and parse_dtype(torch.float16) is torch.float16
    with pytest.raises(InvalidArgument, match="use one of float32, bfloat16, float16"):
        parse_dtype("int8")
