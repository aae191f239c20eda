"""FlintLoadPolicy: the replica count Serve is asked for, from flint's own load reports."""

from __future__ import annotations

import pytest
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.config import AutoscalingConfig, AutoscalingContext

from flint.distributed.autoscaling import (METRIC_KV_USED, METRIC_RUNNING, METRIC_WAITING, FlintLoadPolicy,
                                           engine_load_metrics)
from flint.engine.types import LoadInfo

DEP = DeploymentID(name="flint-engine", app_name="flint")


def context(per_replica: list[tuple[float, float, float]] | None, *, current: int, target: int | None = None):
    """per_replica: (running, waiting, kv_used_fraction) reported by each running replica."""
    ids = [ReplicaID(unique_id=f"r{i}", deployment_id=DEP) for i in range(current)]
    metrics = None
    if per_replica is not None:
        metrics = {name: {rid: values[k] for rid, values in zip(ids, per_replica)}
                   for k, name in enumerate((METRIC_RUNNING, METRIC_WAITING, METRIC_KV_USED))}
    return AutoscalingContext(
        deployment_id=DEP, deployment_name=DEP.name, app_name=DEP.app_name, current_num_replicas=current,
        target_num_replicas=current if target is None else target, running_replicas=ids,
        total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics=metrics, raw_metrics=None,
        capacity_adjusted_min_replicas=1, capacity_adjusted_max_replicas=8, policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=0.0,
        config=AutoscalingConfig(min_replicas=1, max_replicas=8))


def test_demand_over_target_per_replica_sets_the_count():
    policy = FlintLoadPolicy(target_requests_per_replica=2)
    assert policy(context([(2, 3, 0.1), (1, 0, 0.1)], current=2))[0] == 3      # 6 requests / 2
    assert policy(context([(1, 0, 0.1), (0, 0, 0.0)], current=2))[0] == 1      # 1 request: scale in
    assert policy(context([(0, 0, 0.0)], current=1))[0] == 0                    # Serve clamps to min


def test_a_nearly_full_kv_cache_adds_a_replica_whatever_the_request_count():
    policy = FlintLoadPolicy(target_requests_per_replica=8, kv_high_fraction=0.8)
    assert policy(context([(1, 0, 0.95)], current=1))[0] == 2


def test_no_reports_yet_holds_the_current_target():
    assert FlintLoadPolicy()(context(None, current=2, target=3))[0] == 3


def test_replicas_report_the_engine_load():
    report = engine_load_metrics(LoadInfo(running=3, waiting=2, kv_used_fraction=0.5, max_context_tokens=10))
    assert report == {METRIC_RUNNING: 3.0, METRIC_WAITING: 2.0, METRIC_KV_USED: 0.5}


def test_bad_policy_settings_are_rejected():
    with pytest.raises(ValueError, match="target_requests_per_replica"):
        FlintLoadPolicy(target_requests_per_replica=0)
