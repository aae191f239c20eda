"""A Ray-hosted replica runs its engine with the actor's num_cpus as torch threads, not the node's cores."""

from __future__ import annotations

import os

import pytest


def test_replica_actor_threads_follow_its_num_cpus(engine_replica):
    import ray

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a machine with 2+ cores, where the node's cores and the actor's num_cpus=1 differ")
    assert ray.get(engine_replica.actor.num_threads.remote(), timeout=30) == 1
