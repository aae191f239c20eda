"""Where shard workers go: one placement-group bundle per pipeline stage.

A bundle holds all tp ranks of its stage, so a stage's tensor-parallel ranks
land on one node (their all-reduce runs twice per layer and must not cross
the network); the group's strategy spreads the stage bundles over nodes
(SPREAD best effort, STRICT_SPREAD required, PACK to keep them together).
"""

from __future__ import annotations

from flint.distributed.config import ShardingConfig

_STRATEGY = {"spread": "SPREAD", "strict_spread": "STRICT_SPREAD", "pack": "PACK"}


def shard_resources(cfg: ShardingConfig, *, cluster_has_shard_resource: bool) -> dict[str, float]:
    """Ray resources ONE shard worker reserves."""
    if cfg.accelerator == "gpu":
        return {"GPU": 1.0, "CPU": cfg.cpus_per_shard} if cfg.cpus_per_shard else {"GPU": 1.0}
    res: dict[str, float] = {}
    if cluster_has_shard_resource:
        res[cfg.shard_resource] = 1.0
    if cfg.cpus_per_shard:
        res["CPU"] = cfg.cpus_per_shard
    # A bundle cannot be empty; a sliver of CPU keeps a plain `ray.init()` usable.
    return res or {"CPU": 0.01}


def stage_bundles(cfg: ShardingConfig, *, cluster_has_shard_resource: bool) -> list[dict[str, float]]:
    one = shard_resources(cfg, cluster_has_shard_resource=cluster_has_shard_resource)
    return [{name: amount * cfg.tp for name, amount in one.items()} for _ in range(cfg.pp)]


def strategy(cfg: ShardingConfig) -> str:
    return _STRATEGY[cfg.placement]


def create_placement_group(cfg: ShardingConfig):
    """Reserve the stage bundles; raises Unavailable if the cluster cannot hold them in time."""
    import ray
    from ray.util.placement_group import placement_group

    from flint.errors import Unavailable

    has_slots = cfg.shard_resource in ray.cluster_resources()
    bundles = stage_bundles(cfg, cluster_has_shard_resource=has_slots)
    pg = placement_group(bundles, strategy=strategy(cfg), name="")
    try:
        ray.get(pg.ready(), timeout=cfg.start_timeout_s)
    except Exception as exc:
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(pg)
        raise Unavailable(
            f"cannot place {cfg.pp} stage(s) x {cfg.tp} shard(s) ({bundles}, {strategy(cfg)}) on this Ray cluster "
            f"within {cfg.start_timeout_s:g}s: add nodes/resources or lower pp/tp ({exc.__class__.__name__})"
        ) from exc
    return pg, one_shard_options(cfg, has_slots)


def one_shard_options(cfg: ShardingConfig, has_slots: bool) -> dict:
    res = shard_resources(cfg, cluster_has_shard_resource=has_slots)
    opts: dict = {"num_cpus": res.pop("CPU", 0.0), "num_gpus": res.pop("GPU", 0.0)}
    if res:
        opts["resources"] = res
    return opts
