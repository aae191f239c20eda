"""Ray Serve autoscaling fed by flint's own load signal.

Tokens never pass through Serve handles (DESIGN.md, token path), so Serve's
built-in signal (ongoing handle requests) is always ~0 for flint. Instead
each engine replica reports its engine load through the deployment's
`record_autoscaling_stats` hook (running, waiting, KV use), and
`FlintLoadPolicy` turns the latest per-replica figures into a replica count:

    demand  = sum over replicas of (running + waiting)
    desired = ceil(demand / target_requests_per_replica)
    +1 while any replica's KV use is above kv_high_fraction (a full KV
       cache queues new requests however few are running)

Serve's wrapper then applies min/max replicas and the upscale/downscale
delays of the deployment's autoscaling_config, so this class holds only
the policy itself and is easy to test with real `AutoscalingContext`s.
"""

from __future__ import annotations

import math
from typing import Any

METRIC_RUNNING = "flint_running"
METRIC_WAITING = "flint_waiting"
METRIC_KV_USED = "flint_kv_used_fraction"


def engine_load_metrics(load) -> dict[str, float]:
    """What a replica reports to Serve, from the engine's `LoadInfo`."""
    return {METRIC_RUNNING: float(load.running), METRIC_WAITING: float(load.waiting),
            METRIC_KV_USED: float(load.kv_used_fraction)}


class FlintLoadPolicy:
    """Custom Serve autoscaling policy: `policy_function: flint.distributed.autoscaling:FlintLoadPolicy`."""

    def __init__(self, target_requests_per_replica: float = 4.0, kv_high_fraction: float = 0.85):
        if target_requests_per_replica <= 0:
            raise ValueError(f"target_requests_per_replica must be > 0, got {target_requests_per_replica}")
        if not 0 < kv_high_fraction <= 1:
            raise ValueError(f"kv_high_fraction must be in (0, 1], got {kv_high_fraction}")
        self.target = float(target_requests_per_replica)
        self.kv_high = float(kv_high_fraction)

    def __call__(self, ctx) -> tuple[int, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        running = metrics.get(METRIC_RUNNING, {})
        waiting = metrics.get(METRIC_WAITING, {})
        kv = metrics.get(METRIC_KV_USED, {})
        if not running and not waiting:
            # No report yet (replicas starting): hold the current target.
            return ctx.target_num_replicas, {}
        demand = sum(running.values()) + sum(waiting.values())
        desired = math.ceil(demand / self.target)
        if any(v >= self.kv_high for v in kv.values()):
            desired = max(desired, ctx.current_num_replicas + 1)
        return desired, {"demand": demand}
