"""Fixtures for distributed tests: one 3-node local Ray cluster shared by the session.

Starting Ray nodes costs ~15 s on the 2-core test machine, so the node
processes live for the session; each test module connects its own driver
(`cluster_ray`) and disconnects at its end, so the serving tests' own local
Ray instance (`ray_local`) can start afterwards in the same pytest process.
"""

from __future__ import annotations

import pytest
import ray

from flint.cluster.local import LocalCluster, LocalClusterConfig


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory):
    cfg = LocalClusterConfig(workers=2, cpus_per_node=1, shards_per_node=2,
                             state_dir=str(tmp_path_factory.mktemp("local-cluster")))
    cluster = LocalCluster(cfg)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cluster_ray(local_cluster):
    if ray.is_initialized():
        raise RuntimeError("another Ray driver is connected in this process (ray_local?); distributed "
                           "tests must run before it or in their own pytest process")
    ray.init(address=local_cluster.address, namespace="flint-tests", log_to_driver=False,
             logging_level="WARNING")
    try:
        yield local_cluster
    finally:
        ray.shutdown()
