"""Replicas inside Ray export their engine load through Ray's metrics (no port of their own)."""

from types import SimpleNamespace

import ray

from flint.observability.ray_metrics import RayEngineGauges, in_ray_worker


def test_engine_gauges_are_set_from_inside_a_ray_worker(cluster_ray):
    # cluster_ray, not ray_local: a local Ray driver left connected would keep the later distributed
    # modules of this session from joining the 3-node cluster
    @ray.remote(num_cpus=0)
    def in_worker():
        load = SimpleNamespace(running=3, waiting=1, kv_used_fraction=0.25)
        gauges = RayEngineGauges(lambda: load, lambda: "replica-x")
        gauges.sample()                                  # sets each gauge with the replica's tag
        return in_ray_worker(), [g._name for g, _ in gauges._gauges]

    inside, names = ray.get(in_worker.remote())
    assert inside and not in_ray_worker()                # the test driver is not a Ray worker
    assert names == ["flint_num_requests_running", "flint_num_requests_waiting", "flint_kv_cache_usage_perc"]
