"""Hosts one engine replica inside a Ray actor.

The actor holds a CPU (or GPU) resource, loads the engine, starts its
internal gRPC server and returns the address; after that Ray only manages
lifecycle and placement, never the token path. `ReplicaHost` is a plain
class so it can also be wrapped as a Ray Serve deployment (issue 4) or run
in-process without Ray.
"""

from __future__ import annotations

import asyncio
import logging

from flint.config import ReplicaConfig
from flint.observability.metrics import metrics

log = logging.getLogger(__name__)


class ReplicaHost:
    """Engine + ReplicaServer owned together; the body of the Ray actor."""

    def __init__(self, engine_config, replica_config: ReplicaConfig):
        self._engine_config = engine_config
        self._replica_config = replica_config
        self._engine = None
        self._server = None

    async def start(self) -> str:
        """Load the model (off the event loop), start the engine and the server; returns host:port."""
        from flint.engine.async_engine import AsyncEngine
        from flint.replica.server import ReplicaServer

        self._engine = await asyncio.to_thread(AsyncEngine.from_config, self._engine_config)
        await self._engine.start()
        self._server = ReplicaServer(self._engine, self._replica_config)
        try:
            return await self._server.start()
        except BaseException:
            await self._engine.stop()
            raise

    def replica_id(self) -> str:
        return self._server.replica_id if self._server else ""

    def address(self) -> str:
        return self._server.address if self._server else ""

    async def stop(self, grace_s: float | None = None) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
        if self._engine is not None:
            await self._engine.stop()
            self._engine = None


def start_replica_actors(engine_config, replica_config: ReplicaConfig, *, count: int, num_cpus: float,
                         timeout_s: float) -> list[tuple[object, str]]:
    """Start `count` replica actors on the connected Ray cluster; returns (actor, address) pairs."""
    import ray

    from flint.errors import FlintError, Unavailable

    actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=0)(ReplicaHost)
    actors = [actor_cls.remote(engine_config, replica_config) for _ in range(count)]
    try:
        with metrics().time_ray("replica_start"):
            addresses = ray.get([a.start.remote() for a in actors], timeout=timeout_s)
    except BaseException as exc:
        for actor in actors:
            ray.kill(actor)
        cause = getattr(exc, "cause", None)  # RayTaskError wraps what the actor raised
        if isinstance(cause, FlintError):
            raise cause from None
        if isinstance(exc, ray.exceptions.GetTimeoutError):
            raise Unavailable(f"engine replicas did not start within {timeout_s:g} s; is the Ray cluster short "
                              f"of resources ({num_cpus:g} CPU per replica)?") from None
        raise
    return list(zip(actors, addresses))


def stop_replica_actors(actors, grace_s: float = 5.0) -> None:
    """Drain each replica, then end its actor."""
    import ray

    refs = [a.stop.remote(grace_s) for a in actors]
    try:
        with metrics().time_ray("replica_stop"):
            ray.get(refs, timeout=grace_s + 10)
    except Exception as exc:  # noqa: BLE001 - shutting down regardless
        log.warning("replica did not stop cleanly: %s", exc)
    for actor in actors:
        ray.kill(actor)
