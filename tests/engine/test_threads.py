"""The engine uses the cores it is given: num_threads=0 (the default) means the process's CPU affinity."""

from __future__ import annotations

import os

import pytest
import torch

from flint.engine.config import EngineConfig, cores_given
from flint.engine.engine import Engine


@pytest.fixture
def restore_threads_and_affinity():
    threads, cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    try:
        yield cpus
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)


def test_default_is_the_cores_given_not_one():
    assert EngineConfig().num_threads == 0
    assert EngineConfig().threads() == cores_given() == len(os.sched_getaffinity(0))
    assert EngineConfig(num_threads=3).threads() == 3


def test_engine_follows_the_process_affinity(demo_checkpoint, restore_threads_and_affinity):
    cpus = sorted(restore_threads_and_affinity)
    config = EngineConfig.from_dict({"kv_cache_bytes": 1 << 22}, model=str(demo_checkpoint))
    os.sched_setaffinity(0, {cpus[0]})                   # this process is given one core
    Engine.from_config(config)
    assert torch.get_num_threads() == 1
    if len(cpus) < 2:
        pytest.skip("the machine has one core: the two-core half of this test needs two")
    os.sched_setaffinity(0, set(cpus[:2]))               # ... then two
    Engine.from_config(config)
    assert torch.get_num_threads() == 2
    Engine.from_config(EngineConfig.from_dict({"kv_cache_bytes": 1 << 22, "num_threads": 1},
                                              model=str(demo_checkpoint)))
    assert torch.get_num_threads() == 1                  # an explicit count wins
