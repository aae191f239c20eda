"""Engine load gauges through Ray's own metrics (for replicas that Ray or Ray Serve runs).

A replica under Ray Serve gets a random port and moves between pods, so a per-replica scrape target is
not a thing an operator can configure. Ray's metrics agent on each node already exports every process's
`ray.util.metrics` at the node's metrics export port (`ray start --metrics-export-port`, 8080 in
cluster/): one scrape config per node covers every replica on it, tagged with the replica id. Names get
Ray's `ray_` prefix: ray_flint_num_requests_running, ray_flint_num_requests_waiting,
ray_flint_kv_cache_usage_perc.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

_GAUGES = (("flint_num_requests_running", "running", "Requests running in the engine"),
           ("flint_num_requests_waiting", "waiting", "Requests waiting for the engine"),
           ("flint_kv_cache_usage_perc", "kv_used_fraction", "Share of the KV cache in use (0-1)"))


class RayEngineGauges:
    """Sets the gauges from `load_fn()` (an engine LoadInfo) every `interval_s` on a daemon thread."""

    def __init__(self, load_fn: Callable, replica_id: Callable[[], str], interval_s: float = 1.0):
        from ray.util.metrics import Gauge

        self._load_fn, self._replica_id, self.interval_s = load_fn, replica_id, interval_s
        self._gauges = [(Gauge(name, description, tag_keys=("replica_id",)), field)
                        for name, field, description in _GAUGES]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flint-ray-metrics", daemon=True)

    def start(self) -> "RayEngineGauges":
        self._thread.start()
        return self

    def sample(self) -> None:
        load, tags = self._load_fn(), {"replica_id": self._replica_id() or "unknown"}
        for gauge, field in self._gauges:
            gauge.set(float(getattr(load, field)), tags=tags)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:   # noqa: BLE001 - a metrics hiccup never stops the replica
                log.debug("ray metrics sample failed", exc_info=True)

    def stop(self) -> None:
        self._stop.set()


def in_ray_worker() -> bool:
    """True inside a process Ray started for an actor or task (not in a driver such as `flint serve`)."""
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:   # noqa: BLE001 - no Ray, or an older API: not a Ray worker
        return False
