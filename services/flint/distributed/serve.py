"""Engine replicas as a Ray Serve deployment.

Serve owns what it is good at: how many replicas run (autoscaling between
min and max on flint's load signal, see `autoscaling`), where they run,
health checks, restarts and rolling upgrades. It does NOT carry tokens: each
replica runs its own internal gRPC server and publishes its address, health
and load in Redis, and front-end workers stream from it directly.

Scale-down is a graceful drain: Serve calls the replica's `__del__`, which
marks it draining (front-ends stop routing to it and it leaves the Redis
registry) and lets running streams finish within `drain_grace_s` before the
gRPC server stops. `graceful_shutdown_timeout_s` is set above that grace so
Serve does not kill the actor first.

Serve config files point at `flint.distributed.serve:build_app` (an
application builder) with `args` holding a `ServeDeploymentConfig` dict; see
cluster/serve_config.yaml.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from flint.distributed.autoscaling import engine_load_metrics
from flint.errors import InvalidArgument

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "flint-engine"
APP_NAME = "flint"


@dataclass(frozen=True)
class ServeDeploymentConfig:
    """Everything one Serve application of flint engine replicas needs."""

    # The Redis the front-ends use; "" = FLINT_REDIS_URL of each process (set from a Kubernetes Secret, so the
    # password never sits in the Serve config, the dashboard or the RayService object)
    redis_url: str = ""
    engine: dict = field(default_factory=dict)          # EngineConfig keys
    sharding: dict = field(default_factory=dict)        # ShardingConfig keys; {} = whole model in the replica
    replica: dict = field(default_factory=dict)         # ReplicaConfig keys besides redis_url
    min_replicas: int = 1
    max_replicas: int = 2
    initial_replicas: int = 0                            # 0 = min_replicas
    target_requests_per_replica: float = 4.0
    kv_high_fraction: float = 0.85
    upscale_delay_s: float = 2.0
    downscale_delay_s: float = 10.0
    metrics_interval_s: float = 0.5
    look_back_period_s: float = 2.0
    drain_grace_s: float = 30.0                          # running streams get this long on scale-down
    health_check_period_s: float = 2.0
    health_check_timeout_s: float = 10.0
    num_cpus: float = 1.0                                # Ray CPUs per replica actor
    num_gpus: float = 0.0                                # GPUs per replica actor (unsharded GPU replicas: 1)
    resources: dict = field(default_factory=dict)        # extra Ray resources per replica actor
    max_replicas_per_node: int = 0                       # 0 = no limit

    def __post_init__(self) -> None:
        if not self.resolved_redis_url():
            raise InvalidArgument("serve: redis_url is required (replicas publish their address there): set it, "
                                  "or FLINT_REDIS_URL in the environment of every Ray node")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise InvalidArgument(f"serve: need 0 <= min_replicas ({self.min_replicas}) <= max_replicas "
                                  f"({self.max_replicas}) and max_replicas >= 1")
        if self.initial_replicas and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise InvalidArgument("serve: initial_replicas must lie within [min_replicas, max_replicas]")
        for name in ("upscale_delay_s", "downscale_delay_s", "drain_grace_s"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"serve: {name} must be >= 0")
        for name in ("metrics_interval_s", "look_back_period_s", "health_check_period_s",
                     "health_check_timeout_s", "target_requests_per_replica"):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"serve: {name} must be > 0")
        if {"CPU", "GPU"} & set(self.resources):
            raise InvalidArgument("serve: use num_cpus / num_gpus, not resources, for CPUs and GPUs")
        if "redis_url" in self.replica:
            raise InvalidArgument("serve: set redis_url at the top level, not under replica")
        # Validate nested sections now, not in a replica minutes later.
        self.engine_config()
        self.replica_config()
        self.sharding_config()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServeDeploymentConfig":
        from flint.config import from_mapping

        return from_mapping(cls, data, where="serve config")

    def engine_config(self):
        from flint.engine.config import EngineConfig

        return EngineConfig.from_dict(self.engine)

    def replica_config(self):
        from flint.config import ReplicaConfig, from_mapping

        return from_mapping(ReplicaConfig, {**self.replica, "redis_url": self.resolved_redis_url()},
                            where="serve replica")

    def resolved_redis_url(self) -> str:
        from flint import env

        return self.redis_url or env.redis_url() or ""

    def sharding_config(self):
        from flint.distributed.config import ShardingConfig

        return ShardingConfig.from_dict(self.sharding) if self.sharding else None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class EngineReplica:
    """Body of one Serve replica: an engine + its internal gRPC server."""

    async def __init__(self, config: dict):
        from flint.distributed.engine_factory import ShardedReplicaHost
        from flint.replica.host import ReplicaHost

        self.config = ServeDeploymentConfig.from_dict(config)
        sharding = self.config.sharding_config()
        engine_config, replica_config = self.config.engine_config(), self.config.replica_config()
        if not replica_config.replica_id:
            # The Serve replica's own id, so an operator can map a registry entry to its Ray actor.
            from ray import serve

            unique = serve.get_replica_context().replica_id.unique_id
            replica_config = dataclasses.replace(replica_config, replica_id=f"serve-{unique}")
        if sharding is None:
            self.host = ReplicaHost(engine_config, replica_config)
        else:
            self.host = ShardedReplicaHost(engine_config, replica_config, sharding)
        self.address = await self.host.start()
        log.info("flint engine replica %s up at %s", self.host.replica_id(), self.address)

    async def info(self) -> dict:
        """Control plane only (tests, operators): who and where this replica is. Tokens never come here."""
        import ray

        runner = self.host._engine.engine.runner if self.host._engine is not None else None
        return {"replica_id": self.host.replica_id(), "address": self.address,
                "node_id": ray.get_runtime_context().get_node_id(),
                "shards": list(getattr(runner, "placement", []))}   # node, pid, stage, rank of each shard worker

    async def check_health(self) -> None:
        """Serve restarts a replica that cannot serve: its engine step thread failed or ended, its runner's check
        failed (a lost shard worker makes the whole replica unhealthy), or its server stopped."""
        problem = self.host.health()
        if problem:
            raise RuntimeError(f"flint engine replica {self.host.replica_id()}: {problem}")

    async def record_autoscaling_stats(self) -> dict[str, float]:
        return engine_load_metrics(self.host._engine.load())

    async def __del__(self) -> None:
        await self.host.stop(self.config.drain_grace_s)


def deployment_options(cfg: ServeDeploymentConfig) -> dict:
    autoscaling = {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "upscale_delay_s": cfg.upscale_delay_s,
        "downscale_delay_s": cfg.downscale_delay_s,
        "metrics_interval_s": cfg.metrics_interval_s,
        "look_back_period_s": cfg.look_back_period_s,
        "policy": {
            "policy_function": "flint.distributed.autoscaling:FlintLoadPolicy",
            "policy_kwargs": {"target_requests_per_replica": cfg.target_requests_per_replica,
                              "kv_high_fraction": cfg.kv_high_fraction},
        },
    }
    if cfg.initial_replicas:
        autoscaling["initial_replicas"] = cfg.initial_replicas
    actor_options: dict[str, Any] = {"num_cpus": cfg.num_cpus, "num_gpus": cfg.num_gpus}
    if cfg.resources:
        actor_options["resources"] = dict(cfg.resources)
    opts = {
        "name": DEPLOYMENT_NAME,
        "autoscaling_config": autoscaling,
        "ray_actor_options": actor_options,
        "graceful_shutdown_timeout_s": cfg.drain_grace_s + 5.0,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": cfg.health_check_period_s,
        "health_check_timeout_s": cfg.health_check_timeout_s,
    }
    if cfg.max_replicas_per_node:
        opts["max_replicas_per_node"] = cfg.max_replicas_per_node
    return opts


def build_app(args: dict):
    """Serve application builder (`import_path: flint.distributed.serve:build_app`)."""
    from ray import serve

    cfg = ServeDeploymentConfig.from_dict(args)
    return serve.deployment(EngineReplica, **deployment_options(cfg)).bind(cfg.to_dict())


def deploy(cfg: ServeDeploymentConfig):
    """Run the application on the connected Ray cluster (no HTTP proxy: tokens go over gRPC)."""
    from ray import serve

    serve.start(proxy_location="Disabled")
    return serve.run(build_app(cfg.to_dict()), name=APP_NAME, route_prefix=None)
