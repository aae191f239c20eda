"""Metrics (Prometheus), trace spans (OpenTelemetry) and structured logs of front-ends and replicas."""
