"""The configs in cluster/ are what Ray, Serve and flint accept (no cloud needed to check that)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from flint.distributed.serve import EngineReplica, ServeDeploymentConfig, deployment_options

CLUSTER = Path(__file__).resolve().parents[2] / "cluster"


def check_serve_config(config: dict) -> None:
    ServeDeploySchema.model_validate(config)          # Serve's own schema for `serve deploy`
    [app] = config["applications"]
    assert app["import_path"] == "flint.distributed.serve:build_app"
    cfg = ServeDeploymentConfig.from_dict(app["args"])  # flint's validation of the builder args
    options = deployment_options(cfg)
    serve.deployment(EngineReplica, **options)          # Serve accepts the deployment options
    assert options["autoscaling_config"]["policy"]["policy_function"] == \
        "flint.distributed.autoscaling:FlintLoadPolicy"
    # Serve must not kill a replica while it drains its streams.
    assert options["graceful_shutdown_timeout_s"] > cfg.drain_grace_s


def test_serve_config_file_is_valid_for_serve_and_flint():
    check_serve_config(yaml.safe_load((CLUSTER / "serve_config.yaml").read_text()))


def test_kuberay_rayservice_embeds_a_valid_serve_config():
    docs = list(yaml.safe_load_all((CLUSTER / "kuberay-rayservice.yaml").read_text()))
    [service] = [d for d in docs if d["kind"] == "RayService"]
    assert service["apiVersion"] == "ray.io/v1"
    check_serve_config(yaml.safe_load(service["spec"]["serveConfigV2"]))
    assert {d["kind"] for d in docs} == {"RayService", "Deployment", "Service"}


def test_cluster_launcher_config_matches_ray_schema():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "ray-cluster.gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
