"""Environment variables read in flint/env.py: RAY_ADDRESS (set by KubeRay in every pod) is honoured."""

from flint.cli import build_parser, serve_config


def test_serve_joins_the_ray_cluster_named_by_ray_address(monkeypatch):
    monkeypatch.delenv("FLINT_RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert serve_config(build_parser().parse_args(["serve"])).ray_address == "10.0.0.5:6379"
    monkeypatch.setenv("FLINT_RAY_ADDRESS", "auto")            # flint's own variable wins
    assert serve_config(build_parser().parse_args(["serve"])).ray_address == "auto"
    assert serve_config(build_parser().parse_args(["serve", "--ray-address", "h:1"])).ray_address == "h:1"


def test_without_either_variable_serve_starts_a_local_ray(monkeypatch):
    monkeypatch.delenv("FLINT_RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert serve_config(build_parser().parse_args(["serve"])).ray_address == ""
