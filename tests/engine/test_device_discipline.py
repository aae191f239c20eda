"""Every step input reaches the model on the model's device.

The engine builds step inputs on the host (token ids, slot maps, logit rows as CPU tensors); the runner and the
paged attention backend must move them, and build positions, write slots and decode masks, on the device of the
model and its KV cache. A CPU-only machine cannot run a CUDA model, but it has the "meta" device, which refuses
any op that mixes a meta tensor with a CPU tensor of more than zero dimensions ("Tensor on device meta is not on
the expected device cpu"), just as CUDA refuses a CPU index. So these tests load the model and the KV cache on
meta and run real engine steps through the real runner: any step input left on the CPU fails the step.
"""

from __future__ import annotations

import torch

from flint.engine.config import EngineConfig
from flint.engine.engine import Engine
from flint.engine.loader import load_model
from flint.engine.runner import LocalRunner, StepBatch
from flint.engine.tokenizer import Tokenizer

META = torch.device("meta")


class MetaRunner(LocalRunner):
    """The real LocalRunner over a model on the meta device.

    Meta tensors hold shapes but no values, so after the real forward pass (checked for shape and device) the
    engine gets zero logits on the CPU to choose its tokens from: the engine code that builds the next step's
    inputs runs exactly as it does for a real device.
    """

    def __init__(self, model):
        super().__init__(model)
        self.steps: list[StepBatch] = []

    def execute(self, batch: StepBatch) -> torch.Tensor:
        logits = super().execute(batch)
        n = batch.logit_rows.shape[0]
        assert logits.device == META and logits.shape == (n, self.config.vocab_size)
        self.steps.append(batch)
        return torch.zeros(n, self.config.vocab_size)


def meta_engine(path, **config) -> tuple[Engine, MetaRunner]:
    runner = MetaRunner(load_model(path, device=META))
    cfg = EngineConfig.from_dict(dict(kv_cache_bytes=1 << 22, num_threads=1, **config), model=str(path))
    return Engine(cfg, runner, Tokenizer.from_dir(path), model_name="meta"), runner


def test_model_and_kv_cache_live_on_the_meta_device(llama_checkpoint):
    runner = MetaRunner(load_model(llama_checkpoint, device=META))
    runner.init_kv(64)
    assert {p.device for p in runner.model.parameters()} == {META}
    assert runner.attn.k_cache.device == META and runner.attn.v_cache.device == META


def test_engine_steps_with_host_built_inputs_run_on_the_model_device(llama_checkpoint):
    # Prefill in chunks beside decode rows, decode batches of sequences of different lengths (padded mask),
    # and a single-sequence decode: every kind of step the engine builds.
    engine, runner = meta_engine(llama_checkpoint, prefill_tokens_per_step=16, speculation="off")
    engine.add_tokens("long", list(range(3, 40)), 4)
    engine.add_tokens("short", list(range(5, 9)), 6)
    engine.run_until_done()
    sizes = [(b.num_tokens, len(b.seqs)) for b in runner.steps]
    assert any(t > s for t, s in sizes), "a prefill step ran"
    assert any(t == s > 1 for t, s in sizes), "a batched decode step ran"
    assert sizes[-1] == (1, 1), "a single-sequence decode step ran"
    assert all(b.input_ids.device.type == "cpu" for b in runner.steps), "the engine hands host tensors"
    assert engine.no_leaks()


def test_sliding_window_and_speculative_steps_run_on_the_model_device(mistral_checkpoint):
    engine, runner = meta_engine(mistral_checkpoint, speculation="all", spec_draft_tokens=3)
    prompt = [7, 8, 9, 10] * 6                  # repeats: the n-gram drafter proposes tokens
    engine.add_tokens("spec", prompt, 12, speculate=True)
    engine.add_tokens("plain", list(range(3, 20)), 5)
    engine.run_until_done()
    assert any(len(b.seqs) > 1 for b in runner.steps)
    assert engine.no_leaks()
