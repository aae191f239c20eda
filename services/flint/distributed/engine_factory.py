"""An engine replica whose model runs on shard workers.

Same engine, same replica server as a single-process replica; only the
`ModelRunner` differs (`DistributedRunner` instead of `LocalRunner`). The
replica process is the torch.distributed driver (rank 0) of its shards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from flint.distributed.config import ShardingConfig
from flint.replica.host import ReplicaHost


def build_sharded_engine(engine_config, sharding: ShardingConfig):
    """AsyncEngine over a DistributedRunner (blocking: places shards and loads their weights)."""
    from flint.distributed.runner import DistributedRunner
    from flint.engine.async_engine import AsyncEngine
    from flint.engine.demo import ensure_demo_checkpoint
    from flint.engine.engine import Engine
    from flint.engine.tokenizer import Tokenizer

    if engine_config.quantization != "none":
        from flint.errors import InvalidArgument

        raise InvalidArgument(f"quantization={engine_config.quantization!r} is not supported on sharded replicas "
                              "(pp/tp > 1) yet: shard workers load full-precision weights; use quantization = "
                              "\"none\" there, or one shard per replica")
    path = Path(engine_config.model).expanduser() if engine_config.model else ensure_demo_checkpoint()
    runner = DistributedRunner(str(path), sharding=sharding, dtype=engine_config.dtype)
    try:
        engine = Engine(engine_config, runner, Tokenizer.from_dir(path),
                        model_name=engine_config.model_name or path.name)
    except BaseException:
        runner.close()
        raise
    return AsyncEngine(engine)


class ShardedReplicaHost(ReplicaHost):
    """`ReplicaHost` whose engine runs pp x tp shard workers."""

    def __init__(self, engine_config, replica_config, sharding: ShardingConfig):
        super().__init__(engine_config, replica_config)
        self._sharding = sharding

    async def _start(self) -> str:
        from flint.replica.server import ReplicaServer

        self._engine = await asyncio.to_thread(build_sharded_engine, self._engine_config, self._sharding)
        await self._engine.start()
        self._server = ReplicaServer(self._engine, self._replica_config, on_broken=self._broken)
        try:
            return await self._server.start()
        except BaseException:
            await self.stop(0)
            raise

    async def stop(self, grace_s: float | None = None) -> None:
        engine = self._engine
        await super().stop(grace_s)
        if engine is not None:
            await asyncio.to_thread(engine.engine.runner.close)
