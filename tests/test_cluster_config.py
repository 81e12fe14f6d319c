"""cluster.yaml passes Ray's own validator: what `ray up` runs before launching anything."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_is_valid_for_ray_up() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    prepared = _validate(config)
    assert prepared["head_node_type"] == "head"
    assert prepared["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    # The project is installed on every node.
    assert any("pip install -e ." in cmd for cmd in prepared["setup_commands"])


def test_the_cluster_requires_a_token_and_keeps_its_job_server_on_loopback() -> None:
    prepared = _validate(yaml.safe_load(CLUSTER.read_text()))
    (head_start,) = [c for c in prepared["head_start_ray_commands"] if "ray start" in c]
    (worker_start,) = [c for c in prepared["worker_start_ray_commands"] if "ray start" in c]
    assert head_start.startswith("RAY_AUTH_MODE=token ") and worker_start.startswith("RAY_AUTH_MODE=token ")
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    # the token reaches every node as Ray's default token file, and every shell there uses it
    assert prepared["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    assert any("export RAY_AUTH_MODE=token" in c for c in prepared["setup_commands"])


def test_the_validator_catches_mistakes() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu_worker"]["resourcez"] = {}
    import jsonschema  # what Ray's validator raises: the cluster schema is a JSON schema

    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        _validate(config)
