"""Multi-node behaviour on Ray's own test harness, ``ray.cluster_utils.Cluster`` (real raylets
and a real GCS on loopback): the pool grows as nodes join, its demand is visible to the
autoscaler and withdrawn at the end, a node that dies mid-trial costs a retry, and a head that
dies ends the run with a clear message and leaves every finished trial on disk.

Marked ``cluster``: ``pytest -m "not cluster"`` runs the fast subset.
"""

from __future__ import annotations

import copy
import datetime as dt
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import REPO, TINY_SPEC, Driver, eventually, ray_env, run_cli, write_spec
from orchestrator.results import ResultsStore

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A head with 0 CPUs (nothing trains on it, as in cluster.yaml) plus one 1-CPU worker node."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()  # stops only this cluster's processes


def _spec(tmp_path: Path, name: str, seeds: int, steps: int, **resources: Any) -> Path:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name=name, output=str(tmp_path / "results"))
    spec["sweep"] = {"grid": {"model.cell": ["lstm", "gru"]}, "seeds": list(range(seeds))}
    spec["train"].update(max_steps=steps, eval_every=10)
    spec["resources"].update(resources)
    return write_spec(tmp_path / f"{name}.yaml", spec)


def _pending_demand(address: str) -> list[tuple[dict[str, float], int]]:
    """The resource requests waiting in the cluster, as the autoscaler reads them from the GCS."""
    from ray._raylet import GcsClient
    from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

    reply = GetClusterStatusReply()
    reply.ParseFromString(GcsClient(address=address).get_cluster_status(timeout_s=10))
    return [(dict(r.request.resources_bundle), r.count) for r in reply.cluster_resource_state.pending_resource_requests]


def _demand_withdrawn(address: str) -> bool:
    """Whether the pending demand empties within 20 s.

    Raylets report their queued leases to the GCS on a period, so a request withdrawn by
    ``ray.kill`` (or by the driver's exit) leaves the autoscaler's view a moment later, not at once.
    """
    return eventually(lambda: _pending_demand(address) == [], 20, every_s=0.5)


def _intervals(rows: list[dict]) -> list[tuple[dt.datetime, dt.datetime]]:
    return sorted((r["started_at"], r["finished_at"]) for r in rows)


def test_pool_grows_as_nodes_join_and_its_demand_is_withdrawn(tmp_path: Path, cluster: Any) -> None:
    # Trials long enough (about 2-5 s each here, 6 of them) that work is left when the nodes have
    # joined and their workers have started: at 60 steps a quiet machine finished all six on the
    # first node before the new workers were up.
    spec_path = _spec(tmp_path, "grow", seeds=3, steps=400, max_concurrent=3)
    driver = Driver(["run", str(spec_path), "--address", cluster.address], ray_env(tmp_path), tmp_path / "grow.log")
    try:
        driver.wait_for(lambda t: "started (attempt 1)" in t, 120, "the first trial to start")
        # One node of 1 CPU runs one trial; the two other workers the spec allows wait, and
        # their wait is the demand an autoscaler would act on.
        def waiting() -> bool:
            return any(b.get("CPU") == 1.0 and n >= 2 for b, n in _pending_demand(cluster.address))

        assert eventually(waiting, 30, every_s=0.5), _pending_demand(cluster.address)
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        code = driver.finish(timeout=240)
    finally:
        if driver.proc.poll() is None:
            driver.finish(timeout=1)
    out = driver.text()
    assert code == 0, out
    assert "Traceback" not in out
    rows = pq.read_table(tmp_path / "results" / "grow" / "trials.parquet").to_pylist()
    assert len(rows) == 6 and {r["status"] for r in rows} == {"completed"}
    assert out.count("worker up on") >= 3, out  # a worker on each node, the two new ones included
    spans = _intervals(rows)
    overlapping = sum(1 for (s1, e1), (s2, e2) in pairwise(spans) if s2 < e1)
    assert overlapping >= 1, spans  # trials ran side by side once the nodes joined
    assert _demand_withdrawn(cluster.address), _pending_demand(cluster.address)  # withdrawn at the end


def test_node_dying_mid_trial_costs_a_retry_not_the_sweep(tmp_path: Path, cluster: Any) -> None:
    doomed = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    spec_path = _spec(tmp_path, "nodeloss", seeds=1, steps=400, max_concurrent=2, max_retries=2)
    driver = Driver(["run", str(spec_path), "--address", cluster.address], ray_env(tmp_path), tmp_path / "loss.log")
    try:
        driver.wait_for(lambda t: t.count("step 10:") >= 2, 180, "both trials to evaluate once")
        cluster.remove_node(doomed, allow_graceful=False)  # its raylet and workers die at once
        cluster.add_node(num_cpus=1)  # a replacement joins, as an autoscaler would add one
        code = driver.finish(timeout=240)
    finally:
        if driver.proc.poll() is None:
            driver.finish(timeout=1)
    out = driver.text()
    assert code == 0, out
    assert "lost its worker" in out and "retrying (attempt 2)" in out
    rows = pq.read_table(tmp_path / "results" / "nodeloss" / "trials.parquet").to_pylist()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    assert sorted(r["attempts"] for r in rows) == [1, 2]
    assert all(r["steps"] == 400 for r in rows)


def test_head_dying_ends_the_run_clearly_and_the_rerun_resumes(tmp_path: Path, cluster: Any) -> None:
    spec_path = _spec(tmp_path, "headloss", seeds=2, steps=400, max_concurrent=1)
    env = ray_env(tmp_path)
    driver = Driver(["run", str(spec_path), "--address", cluster.address], env, tmp_path / "head.log")
    try:
        driver.wait_for(lambda t: "progress: 1/4 done" in t, 240, "the first trial to finish")
        cluster.remove_node(cluster.head_node, allow_graceful=False)
        start = time.monotonic()
        code = driver.finish(timeout=120)
        took = time.monotonic() - start
    finally:
        if driver.proc.poll() is None:
            driver.finish(timeout=1)
    out = driver.text()
    assert code == 1, out
    assert "lost the Ray cluster" in out and "run the same command again" in out
    assert "Traceback" not in out
    assert took < 90, took
    job = tmp_path / "results" / "headloss"
    # The union of tables and parts: a driver Ray ended abruptly never compacted its parts.
    done = [r for r in ResultsStore(job).read_trials().to_pylist() if r["status"] == "completed"]
    assert len(done) >= 1
    # The rerun (here on an embedded Ray: the cluster is gone) skips what finished.
    rerun = run_cli(["run", str(spec_path)], env, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"skipping {len(done)} finished trials" in rerun.stdout
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4


_STUCK_IN_RAY = """
import sys, time
from orchestrator.cli import print_error
from orchestrator.supervise import supervise

def driver():
    import ray
    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote(num_cpus=1)
    def forever():
        time.sleep(3600)

    ref = forever.remote()
    print("waiting", flush=True)
    ray.get(ref)  # inside Ray when the head dies
    return 0

raise SystemExit(supervise(driver, say=print_error))
"""


def test_a_driver_ray_ends_without_unwinding_still_gets_its_error_line(tmp_path: Path, cluster: Any) -> None:
    # Ray's client ends a driver with _Exit(1) and no Python unwinding once the GCS has been gone
    # for gcs_rpc_server_reconnect_timeout_s (16 s here, 60 s by default), or at once when this
    # node's raylet dies under an object read; the supervisor that `run` forks says what happened.
    env = ray_env(tmp_path, {"RAY_gcs_rpc_server_reconnect_timeout_s": "16"})
    proc = subprocess.Popen([sys.executable, "-c", _STUCK_IN_RAY, cluster.address], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "waiting":
                break
        cluster.remove_node(cluster.head_node, allow_graceful=False)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: lost the Ray cluster: the driver process (pid "), out
    assert "ended abruptly inside Ray (exit status 1)" in last and "run the same command again" in last


def test_a_trial_no_node_can_host_fails_with_the_reason(tmp_path: Path, cluster: Any) -> None:
    # Every node has 1 CPU, a trial asks for 2, and nothing can add a bigger node.
    spec_path = _spec(tmp_path, "unhostable", seeds=1, steps=20, cpus_per_trial=2, placement_timeout_s=3)
    start = time.monotonic()
    result = run_cli(["run", str(spec_path), "--address", cluster.address], ray_env(tmp_path), timeout=180)
    took = time.monotonic() - start
    out = result.stdout + result.stderr
    assert result.returncode == 1, out  # failed trials: an environment problem, not a result
    assert "Traceback" not in out
    rows = pq.read_table(tmp_path / "results" / "unhostable" / "trials.parquet").to_pylist()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"failed"}
    for r in rows:
        assert "no node of the cluster can host a trial" in r["error"] and "needs 2 CPU" in r["error"], r["error"]
    assert took < 120, took
    assert _demand_withdrawn(cluster.address), _pending_demand(cluster.address)  # the waiting workers' too
