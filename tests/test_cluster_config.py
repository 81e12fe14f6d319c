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


def test_the_validator_catches_mistakes() -> None:
    config = yaml.safe_load(CLUSTER.read_text())
    config["available_node_types"]["gpu_worker"]["resourcez"] = {}
    import jsonschema  # what Ray's validator raises: the cluster schema is a JSON schema

    with pytest.raises(jsonschema.ValidationError, match="resourcez"):
        _validate(config)
