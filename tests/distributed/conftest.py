"""Fixtures for distributed tests: one 3-node local Ray cluster shared by the session.

Starting Ray nodes costs ~15 s on the 2-core test machine, so every test that
needs the multi-node cluster shares this one and releases what it places.
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
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address=cluster.address, namespace="flint-tests", log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()
