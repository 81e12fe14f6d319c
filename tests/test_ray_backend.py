"""The Ray backend on a real embedded Ray: a worker whose runtime env cannot be set up fails
its trial with the agent's cause in one line, and the sweep goes on to the end.

(The dispatcher's policy for this is in test_dispatch.py with a scripted backend; this checks
that Ray's own ``RuntimeEnvSetupError`` reaches it as that notice.)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TINY_SPEC
from orchestrator.results import ResultsStore
from orchestrator.run.dispatch import Dispatcher
from orchestrator.run.ray_backend import RayBackend
from orchestrator.spec import build_job

# A package URI that no upload ever made: the runtime-env agent fails to fetch it, offline, in seconds.
MISSING_PACKAGE = "gcs://_ray_pkg_00000000000000000000000000000000.zip"


@pytest.fixture
def embedded_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_a_runtime_env_that_cannot_be_set_up_fails_each_trial_with_its_cause(
    tmp_path: Path, embedded_ray: None
) -> None:
    raw = copy.deepcopy(TINY_SPEC)
    raw["sweep"] = {"grid": {"model.cell": ["lstm"]}, "seeds": [0, 1]}
    job = build_job(raw, source="<test>")
    backend = RayBackend(elastic=False, actor_options={"runtime_env": {"working_dir": MISSING_PACKAGE}})
    backend.open(job.spec.resources)  # the embedded Ray of the fixture: used, not shut down
    store = ResultsStore(tmp_path / "job")
    try:
        summary = Dispatcher(list(job.trials), job.spec.resources, store, backend).run()
    finally:
        backend.shutdown()  # stops its watch of the cluster; leaves the fixture's Ray running

    rows = store.read_trials().to_pylist()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"failed"}
    assert sum(summary.statuses.values()) == 2 and not summary.interrupted
    for r in rows:
        error = r["error"]
        assert "\n" not in error, error
        assert "RuntimeEnvSetupError" in error and "Failed to download runtime_env file package" in error, error


def test_a_hand_started_cluster_has_no_autoscaler_that_can_launch() -> None:
    from orchestrator.run.placement import _v1_can_launch

    # The read-only monitor of a hand-started cluster (as measured on ray.cluster_utils.Cluster).
    readonly = {"autoscaler_report": {"active_nodes": {"node_c71a": 1, "node_c303": 1},
                                      "node_type_mapping": {"c71a": "node_c71a", "c303": "node_c303"}}}
    # A v1 autoscaler from cluster.yaml: its node types are the config's names.
    configured = {"autoscaler_report": {"active_nodes": {"head": 1},
                                        "node_type_mapping": {"c71a": "head"}}}
    assert not _v1_can_launch(readonly)
    assert _v1_can_launch(configured)
    assert not _v1_can_launch({})
