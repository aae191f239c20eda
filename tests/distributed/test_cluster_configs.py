"""The configs in cluster/ and the Dockerfile are what Kubernetes, KubeRay, Ray, Serve and flint accept.

Offline: Kubernetes objects (and the pod templates inside the RayService) are validated strictly against
the Kubernetes API schemas that the `kubernetes-validate` package ships; KubeRay's own fields against the
fields its v1 API types read (KubeRay publishes no schema package, so they are listed below from
ray-operator/apis/ray/v1); the Serve config by Serve's and flint's own validation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml
from ray import serve
from ray.serve.schema import ServeDeploySchema

from flint.distributed.serve import EngineReplica, ServeDeploymentConfig, deployment_options
from flint.engine.config import EngineConfig

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
K8S_VERSION = "1.33.0"

# Fields of KubeRay's ray.io/v1 types that the operator reads (deprecated ones left out on purpose).
RAYSERVICE_SPEC = {"serveConfigV2", "rayClusterConfig", "upgradeStrategy", "serveService",
                   "excludeHeadPodFromServeSvc", "rayClusterDeletionDelaySeconds"}
DEPRECATED = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}
RAYCLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs"}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
GPUS_PER_INSTANCE = {"g5.xlarge": 1, "g5.2xlarge": 1, "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
                     "p4d.24xlarge": 8, "g6.12xlarge": 4}


@pytest.fixture(autouse=True)
def redis_from_the_environment(monkeypatch):
    # The configs leave redis_url out: every Ray node reads FLINT_REDIS_URL (from a Secret on Kubernetes).
    monkeypatch.setenv("FLINT_REDIS_URL", "redis://:secret@redis.flint.svc:6379/0")


def manifests() -> list[dict]:
    return list(yaml.safe_load_all((CLUSTER / "kuberay-rayservice.yaml").read_text()))


def one(kind: str, name: str | None = None) -> dict:
    return next(d for d in manifests() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def check_serve_config(config: dict) -> ServeDeploymentConfig:
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
    assert "redis_url" not in app["args"]                # the password lives in a Secret / the node environment
    return cfg


def rayservice_serve_config() -> ServeDeploymentConfig:
    return check_serve_config(yaml.safe_load(one("RayService")["spec"]["serveConfigV2"]))


def pod_templates(service: dict) -> list[dict]:
    rc = service["spec"]["rayClusterConfig"]
    return [rc["headGroupSpec"]["template"], *(w["template"] for w in rc["workerGroupSpecs"])]


def test_serve_config_file_is_valid_for_serve_and_flint():
    cfg = check_serve_config(yaml.safe_load((CLUSTER / "serve_config.yaml").read_text()))
    assert cfg.sharding_config().tp == 2


def test_kubernetes_objects_and_ray_pod_templates_pass_strict_kubernetes_schemas():
    docs = manifests()
    assert {d["kind"] for d in docs} == {"RayService", "Deployment", "PodDisruptionBudget", "Service",
                                         "NetworkPolicy"}
    for doc in docs:
        if doc["kind"] != "RayService":
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for template in pod_templates(one("RayService")):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                      "template": template}, K8S_VERSION, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError):    # the check does catch a field k8s ignores
        bad = one("Deployment")
        bad["spec"]["template"]["spec"]["containers"][0]["gracePeriod"] = 5
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_rayservice_uses_only_fields_kuberay_reads():
    service = one("RayService")
    assert service["apiVersion"] == "ray.io/v1"
    spec = service["spec"]
    assert set(spec) <= RAYSERVICE_SPEC and not set(spec) & DEPRECATED, set(spec) - RAYSERVICE_SPEC
    rc = spec["rayClusterConfig"]
    assert set(rc) <= RAYCLUSTER_SPEC, set(rc) - RAYCLUSTER_SPEC
    assert set(rc["headGroupSpec"]) <= HEAD_GROUP
    for group in rc["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())   # map[string]string


def test_engine_memory_is_a_share_of_the_gpu_on_cards_big_enough():
    cfg = rayservice_serve_config()
    engine = EngineConfig.from_dict(cfg.engine)
    assert engine.device == "cuda" and 0 < engine.kv_cache_memory_fraction <= 0.95
    worker = one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    [term] = worker["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    [gpu_memory] = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.memory"]
    assert gpu_memory["operator"] == "Gt" and int(gpu_memory["values"][0]) >= 20_000   # MiB: 24 GB cards and up


def test_kv_cache_memory_fraction_needs_a_gpu():
    with pytest.raises(Exception, match="kv_cache_memory_fraction must be in"):
        EngineConfig.from_dict({"kv_cache_memory_fraction": 0.9})            # device cpu
    assert EngineConfig.from_dict({"kv_cache_bytes": 1 << 20}).kv_budget_bytes() == 1 << 20


def test_ray_pods_have_shared_memory_secrets_and_named_ports():
    service = one("RayService")
    cfg = rayservice_serve_config()
    for template in pod_templates(service):
        spec = template["spec"]
        shm = {v["name"] for v in spec["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"}
        [container] = spec["containers"]
        assert any(m["mountPath"] == "/dev/shm" and m["name"] in shm for m in container["volumeMounts"])
        [redis] = [e for e in container["env"] if e["name"] == "FLINT_REDIS_URL"]
        assert redis["valueFrom"]["secretKeyRef"]["name"] == "flint-redis"
        assert any(p["name"] == "metrics" for p in container["ports"])
    worker = pod_templates(service)[1]["spec"]
    engine_port = next(p for p in worker["containers"][0]["ports"] if p["name"] == "engine")
    assert cfg.replica_config().port == engine_port["containerPort"] and cfg.max_replicas_per_node == 1
    link_port = next(p for p in worker["containers"][0]["ports"] if p["name"] == "engine-link")
    assert cfg.replica_config().link_port == link_port["containerPort"]   # the front-ends' default hop
    # the pod outlives Serve's drain of its replica
    assert worker["terminationGracePeriodSeconds"] > deployment_options(cfg)["graceful_shutdown_timeout_s"]
    policy = one("NetworkPolicy")
    for port in ("engine", "engine-link"):
        assert any(p["port"] == port for rule in policy["spec"]["ingress"] for p in rule.get("ports", ()))
    assert "redis://" not in json.dumps(manifests())      # no credentials in the manifests


def test_frontends_balance_grpc_per_request_probe_health_and_drain_within_their_grace():
    grpc_service = one("Service", "flint-grpc")
    assert grpc_service["spec"]["clusterIP"] == "None"    # headless: clients balance over the pods
    pod = one("Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    config = json.loads(container["command"][-1])
    assert "redis_url" not in config and config["http_port"] == 8000
    assert container["readinessProbe"]["grpc"]["port"] == config["port"]
    assert "livenessProbe" in container
    pre_stop_s = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + config["grace_period_s"]
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config["http_port"])


def test_cluster_launcher_config_matches_ray_schema_and_holds_the_replicas():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "ray-cluster.gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    serve_cfg = check_serve_config(yaml.safe_load((CLUSTER / "serve_config.yaml").read_text()))
    gpus_per_replica = serve_cfg.sharding_config().tp * serve_cfg.sharding_config().pp
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"]:
            continue
        gpus = GPUS_PER_INSTANCE[node["node_config"]["InstanceType"]]
        assert gpus >= gpus_per_replica * serve_cfg.max_replicas_per_node, name


def test_cluster_launcher_is_idempotent_and_supervises_the_frontends():
    text = (CLUSTER / "ray-cluster.gpu.yaml").read_text()
    config = yaml.safe_load(text)
    head = "\n".join(config["head_start_ray_commands"])
    assert head.index("docker rm -f flint-redis") < head.index("docker run")      # a re-run replaces it
    assert "--requirepass" in head and "--appendonly yes" in head and "noeviction" in head
    assert "nohup" not in text and "systemctl enable flint-frontend@" in head
    assert "Restart=always" in "\n".join(config["head_setup_commands"])


def test_dockerfile_builds_cpu_by_default_and_cuda_by_argument():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG FLAVOR=cpu$", text, re.M) and "FROM base-${FLAVOR}" in text
    assert "whl/cpu" in text and "whl/cu" in text
    assert re.search(r"^USER 1000$", text, re.M)                       # not root
    assert re.search(r"^EXPOSE 50051 8000", text, re.M) and "/health" in text
    assert "wget" in text                                                # KubeRay's default Ray pod probes
    assert ".git" in (ROOT / ".dockerignore").read_text().split()
