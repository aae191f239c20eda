"""Distributed flint: shard workers (Ray actors), placement, torch.distributed
step coordination, and the Ray Serve deployment of engine replicas.

The engine core never imports this package; a `DistributedRunner` plugs into
it through `flint.engine.runner.ModelRunner`.
"""
