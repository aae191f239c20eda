"""Serving configs validate on construction; config files mirror flags and reject unknown keys."""

import json

import pytest

from flint.config import FrontendConfig, ReplicaConfig, ServeConfig, from_mapping, load_config_file
from flint.errors import InvalidArgument


def test_unknown_key_is_rejected_with_the_allowed_keys():
    with pytest.raises(InvalidArgument, match=r"unknown key\(s\) wrokers; allowed keys: .*workers"):
        from_mapping(ServeConfig, {"wrokers": 2})


def test_dashed_keys_read_as_flags_do(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text('workers = 3\nredis-url = "redis://127.0.0.1:6379"\n[engine]\nmax_batch = 4\n')
    config = from_mapping(ServeConfig, load_config_file(path))
    assert (config.workers, config.redis_url, config.engine) == (3, "redis://127.0.0.1:6379", {"max_batch": 4})


def test_json_config_file_and_bad_json_message(tmp_path):
    good = tmp_path / "serve.json"
    good.write_text(json.dumps({"port": 0, "replicas": 2}))
    assert from_mapping(ServeConfig, load_config_file(good)).replicas == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{port: 0")
    with pytest.raises(InvalidArgument, match="not valid json"):
        load_config_file(bad)


@pytest.mark.parametrize("kwargs, message", [
    ({"workers": 0}, r"workers must be an integer in \[1, 64\]"),
    ({"port": 70000}, r"port must be an integer in \[0, 65535\]"),
    ({"model": "/no/such/dir"}, "is not an HF checkpoint directory"),
    ({"routing": "random"}, "routing must be"),
    ({"engine_transport": "quic"}, "engine_transport must be 'link' or 'grpc'"),
])
def test_serve_config_says_what_to_change(kwargs, message):
    with pytest.raises(InvalidArgument, match=message):
        ServeConfig(**kwargs)


def test_replica_heartbeat_ttl_must_outlive_the_interval():
    with pytest.raises(InvalidArgument, match="heartbeat_ttl_s"):
        ReplicaConfig(redis_url="redis://x", heartbeat_interval_s=2.0, heartbeat_ttl_s=1.0)


def test_frontend_worker_id_is_validated():
    with pytest.raises(InvalidArgument, match="worker_id"):
        FrontendConfig(redis_url="redis://x", worker_id="has space")
