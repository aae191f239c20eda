"""Turn observability on for a process from its ObservabilityConfig: metrics port, JSON logs."""

from __future__ import annotations

import json
import logging

from flint.observability.config import ObservabilityConfig
from flint.observability.metrics import metrics


def start_metrics(table: dict, *, engine_load=None, replica_id=lambda: "") -> int:
    """Serve /metrics when `metrics_port` >= 0; returns the bound port, or -1 when off.

    An engine replica inside a Ray worker also exports its load gauges through Ray's metrics agent
    (flint.observability.ray_metrics), which needs no port of its own.
    """
    config = ObservabilityConfig.from_dict(table)
    stats = metrics()
    if engine_load is not None and "flint_replica_running" not in stats.registry._names_to_collectors:
        stats.engine_gauges(engine_load)
        from flint.observability.ray_metrics import RayEngineGauges, in_ray_worker

        if in_ray_worker():
            RayEngineGauges(engine_load, replica_id).start()
    if config.metrics_port < 0:
        return -1
    return stats.serve(config.metrics_host, config.metrics_port)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and request_id/tenant when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 6), "level": record.levelname, "logger": record.name,
                 "message": record.getMessage()}
        for key in ("request_id", "session_id", "tenant", "worker_id", "replica_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(table: dict, level: str = "WARNING") -> None:
    """Root logging for a worker or replica process: JSON lines when `json_logs`, plain text otherwise."""
    from flint.security.redact import RedactingFormatter, install_log_redaction

    config = ObservabilityConfig.from_dict(table)
    install_log_redaction()
    handler = logging.StreamHandler()
    if config.json_logs:
        handler.setFormatter(RedactingFormatter(JsonFormatter()))
    else:
        handler.setFormatter(RedactingFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
