"""`flint cluster up|down|status`: separate Ray node processes on one machine."""

from __future__ import annotations

import os

import pytest
import ray

from flint.cluster.local import LocalClusterConfig, _alive, load_state, main
from flint.errors import InvalidArgument


def test_up_status_down_runs_nodes_as_separate_processes(tmp_path, capsys):
    state_dir = str(tmp_path / "cluster")
    assert main(["--state-dir", state_dir, "up", "--workers", "1", "--cpus-per-node", "1"]) == 0
    state = load_state(tmp_path / "cluster")
    try:
        assert [n.name for n in state.nodes] == ["head", "w1"]
        assert len({n.pid for n in state.nodes}) == 2 and all(_alive(n.pid) for n in state.nodes)
        assert main(["--state-dir", state_dir, "status"]) == 0
        assert "alive nodes (GCS): 2" in capsys.readouterr().out
        # A second `up` on the same state dir refuses instead of starting a second cluster.
        assert main(["--state-dir", state_dir, "up", "--workers", "1"]) == 2
        assert "already running" in capsys.readouterr().err
    finally:
        assert main(["--state-dir", state_dir, "down"]) == 0
    assert not any(_alive(n.pid) for n in state.nodes)
    assert load_state(tmp_path / "cluster") is None
    assert main(["--state-dir", state_dir, "status"]) == 1


def test_actors_pinned_by_node_resource_land_on_distinct_nodes(cluster_ray):
    @ray.remote(num_cpus=0)
    class Where:
        def node(self) -> tuple[str, int]:
            return ray.get_runtime_context().get_node_id(), os.getpid()

    actors = [Where.options(resources={n.resource: 0.01}).remote() for n in cluster_ray.state.nodes]
    placed = ray.get([a.node.remote() for a in actors])
    assert len({node_id for node_id, _ in placed}) == len(cluster_ray.state.nodes) == 3
    for a in actors:
        ray.kill(a)


def test_bad_cluster_settings_name_what_to_change():
    with pytest.raises(InvalidArgument, match="unknown local cluster settings"):
        LocalClusterConfig.from_dict({"worker": 2})
    with pytest.raises(InvalidArgument, match="workers=-1"):
        LocalClusterConfig(workers=-1)
