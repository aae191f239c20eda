"""Hosts one engine replica inside a Ray actor.

The actor holds a CPU (or GPU) resource, loads the engine, starts its
internal gRPC server and returns the address; after that Ray only manages
lifecycle and placement, never the token path. `ReplicaHost` is a plain
class so it can also be wrapped as a Ray Serve deployment (issue 4) or run
in-process without Ray.

Restarts: the actor is created with `max_restarts`. When its process dies
(crash, OOM kill, node loss) Ray re-runs the constructor in a new process,
but calls no other method. So a restarted instance starts itself: the
constructor sees `was_current_actor_reconstructed` and schedules `start` on
the actor's event loop (`start_on_restart=True`, set by
`start_replica_actors`; a Ray Serve deployment restarts replicas its own
way). The new server registers in Redis under a new
replica id and address, front-end workers pick it up from the registry, and
the dead one's entry expires with its heartbeat. Nobody has to watch the
actors for this, so it works the same under `flint serve`, in tests and in
a Ray cluster whose driver is elsewhere.

A replica whose engine breaks without its process dying (the step thread
raised, a shard worker died) is made to die: its server reports NOT_SERVING
and leaves routing (flint.replica.server), then, with `exit_on_broken`, the
host stops the server briefly (streams get their UNAVAILABLE) and exits the
process with EXIT_ENGINE_BROKEN, which Ray counts as a crash and restarts.
Under Ray Serve, `health()` feeds the deployment's `check_health`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os

from flint.config import ReplicaConfig
from flint.observability.metrics import metrics

log = logging.getLogger(__name__)


EXIT_ENGINE_BROKEN = 70   # the process's exit status when its engine can no longer serve (EX_SOFTWARE)
BROKEN_STOP_GRACE_S = 0.5  # a broken replica's server gets this long to send its streams' statuses


class ReplicaHost:
    """Engine + ReplicaServer owned together; the body of the Ray actor."""

    def __init__(self, engine_config, replica_config: ReplicaConfig, *, start_on_restart: bool = False,
                 exit_on_broken: bool = False):
        self._engine_config = engine_config
        self._replica_config = replica_config
        self._exit_on_broken = exit_on_broken
        self._engine = None
        self._server = None
        self._starting: asyncio.Task | None = None
        self.restarted = start_on_restart and _restarted_by_ray()
        if self.restarted:
            log.warning("engine replica actor restarted by Ray; starting its engine and server again")
            self._starting = asyncio.get_running_loop().create_task(self._start())
            self._starting.add_done_callback(_log_start_failure)

    async def start(self) -> str:
        """Load the model (off the event loop), start the engine and the server; returns host:port.

        Idempotent: a second call (or a call while the post-restart start runs) waits for the same start.
        """
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._starting)

    async def was_restarted(self) -> bool:
        """True in an instance Ray created again after the actor's process died."""
        return self.restarted

    async def wait_started(self) -> str:
        """Wait for a start in progress (the one after a restart included); returns host:port or ''."""
        if self._starting is not None:
            await asyncio.shield(self._starting)
        return self.address()

    def pid(self) -> int:
        """The actor's process id (fault tests kill it to make Ray see a real crash)."""
        return os.getpid()

    async def _start(self) -> str:
        from flint.engine.async_engine import AsyncEngine
        from flint.replica.server import ReplicaServer

        self._engine = await asyncio.to_thread(AsyncEngine.from_config, _with_given_cpus(self._engine_config))
        await self._engine.start()
        self._server = ReplicaServer(self._engine, self._replica_config, on_broken=self._broken)
        try:
            return await self._server.start()
        except BaseException:
            await self._engine.stop()
            raise

    def health(self) -> str:
        """"" while this replica can serve, else why not (Ray Serve's `check_health` raises with it)."""
        if self._engine is None or self._server is None:
            return "the engine replica is not running"
        return self._server.broken or self._engine.health()

    async def _broken(self, problem: str) -> None:
        if not self._exit_on_broken:
            return
        log.error("engine replica cannot serve (%s): exiting with status %d so that Ray restarts it", problem,
                  EXIT_ENGINE_BROKEN)
        try:
            await asyncio.wait_for(self._server.stop(BROKEN_STOP_GRACE_S),
                                   self._replica_config.deregister_delay_s + BROKEN_STOP_GRACE_S + 2)
        finally:
            logging.shutdown()
            os._exit(EXIT_ENGINE_BROKEN)

    def num_threads(self) -> int:
        """Torch threads the engine runs with (tests check it follows the actor's num_cpus)."""
        import torch

        return torch.get_num_threads()

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
        self._starting = None


def _with_given_cpus(engine_config):
    """With num_threads=0 ("the cores given") inside a Ray actor: the actor's CPU resource, at least 1.

    The process's affinity mask covers the whole node under Ray, not the share this replica holds.
    An actor holding no CPU resource (num_cpus=0) keeps the affinity count.
    """
    if getattr(engine_config, "num_threads", None) != 0:
        return engine_config
    try:
        import ray

        if not ray.is_initialized():
            return engine_config
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    except Exception:  # noqa: BLE001 - not inside a Ray worker
        return engine_config
    if cpus <= 0:
        return engine_config
    return dataclasses.replace(engine_config, num_threads=max(1, int(cpus)))


def _restarted_by_ray() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:  # noqa: BLE001 - not inside a Ray actor (in-process host)
        return False


def _log_start_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("engine replica failed to start after a restart: %s", task.exception())


def start_replica_actors(engine_config, replica_config: ReplicaConfig, *, count: int, num_cpus: float,
                         timeout_s: float, max_restarts: int = 3,
                         resources: dict | None = None) -> list[tuple[object, str]]:
    """Start `count` replica actors on the connected Ray cluster; returns (actor, address) pairs.

    Ray restarts a replica whose process dies up to `max_restarts` times (-1: always); the restarted
    actor starts serving by itself (see the module docstring). Calls are not retried
    (`max_task_retries=0`): a stream cut by the crash is the client's to resume or retry.
    """
    import dataclasses

    import ray

    from flint.errors import FlintError, Unavailable
    from flint.security.internal import require_token

    # Resolved here, in the driver: the actors' processes need not share its environment.
    token = require_token(token=replica_config.internal_token, token_file=replica_config.internal_token_file)
    replica_config = dataclasses.replace(replica_config, internal_token=token)
    actor_cls = ray.remote(num_cpus=num_cpus, max_restarts=max_restarts, max_task_retries=0,
                           resources=dict(resources or {}))(ReplicaHost)
    actors = [actor_cls.remote(engine_config, replica_config, start_on_restart=True, exit_on_broken=True)
              for _ in range(count)]
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


def wait_until_serving(actor, timeout_s: float = 300.0) -> str:
    """The replica actor's server address once it serves, waiting through a Ray restart in progress.

    Calls to an actor that Ray is restarting fail with ActorUnavailableError; they are retried until
    `timeout_s` passes.
    """
    import time

    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(actor.wait_started.remote(), timeout=max(1.0, deadline - time.monotonic()))
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


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
