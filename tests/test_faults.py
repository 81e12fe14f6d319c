"""Faults on real local Ray: lost workers are retried, OOM / NaN / errors are recorded, not retried;
a driver killed with SIGKILL resumes without losing or duplicating a trial."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pyarrow.parquet as pq

from orchestrator.results import ResultsStore
from conftest import REPO, TINY_SPEC, ray_env, run_cli, sigkill_driver_when, write_spec
from orchestrator.spec import load_job, trial_config


def _ids_by_cell_seed(spec_path: Path) -> dict[tuple[str, int], str]:
    return {(trial_config(t)["model"]["cell"], trial_config(t)["train"]["seed"]): t.trial_id for t in load_job(spec_path).trials}


pytestmark = pytest.mark.ray  # a real Ray driver in a subprocess


def test_lost_worker_is_retried_and_unfixable_errors_are_recorded(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="faults", output=str(tmp_path / "results"))
    spec["train"]["max_steps"] = 30
    spec_path = write_spec(tmp_path / "faults.yaml", spec)
    ids = _ids_by_cell_seed(spec_path)
    lost, oom, nan, bug = ids[("lstm", 0)], ids[("lstm", 1)], ids[("gru", 0)], ids[("gru", 1)]
    faults = [
        # The worker process dies after its first checkpoint (step 10), on the first attempt only.
        {"trial": lost, "kind": "exit", "at_step": 15, "attempts": [1]},
        {"trial": oom, "kind": "oom", "at_step": 5},
        {"trial": nan, "kind": "nan", "at_step": 12},
        {"trial": bug, "kind": "error", "at_step": 3},
    ]
    env = ray_env(tmp_path, {"RNN_ORCH_FAULTS": json.dumps(faults)})
    proc = run_cli(["run", str(spec_path)], env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out  # a trial failed (a bug in trainer code): exit status 1
    assert "Traceback" not in proc.stderr

    rows = {r["trial_id"]: r for r in pq.read_table(tmp_path / "results" / "faults" / "trials.parquet").to_pylist()}
    assert len(rows) == 4
    # Lost worker: retried on a fresh actor from the driver's checkpoint, then completed.
    assert rows[lost]["status"] == "completed" and rows[lost]["attempts"] == 2 and rows[lost]["steps"] == 30
    assert "retrying (attempt 2) from checkpoint at step 10" in out
    # Out of memory: recorded, not retried.
    assert rows[oom]["status"] == "oom" and rows[oom]["attempts"] == 1
    assert "OutOfMemoryError" in rows[oom]["error"]
    # NaN: the engine's divergence check says where.
    assert rows[nan]["status"] == "diverged" and "non-finite at step 13" in rows[nan]["error"]
    # An exception in trainer code: failed, with type, message and the worker's traceback.
    assert rows[bug]["status"] == "failed" and rows[bug]["attempts"] == 1
    assert rows[bug]["error"].startswith("RuntimeError: injected fault at step 3")
    assert "Traceback (most recent call last)" in rows[bug]["error"]
    evals = pq.read_table(tmp_path / "results" / "faults" / "evals.parquet").to_pylist()
    assert sorted(e["step"] for e in evals if e["trial_id"] == lost) == [10, 20, 30]  # no duplicates after retry
    assert "## Failures (3)" in (tmp_path / "results" / "faults" / "report.md").read_text()


def test_driver_sigkill_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="killme", output=str(tmp_path / "results"))
    spec["resources"]["max_concurrent"] = 1
    spec_path = write_spec(tmp_path / "killme.yaml", spec)
    job = tmp_path / "results" / "killme"
    env = ray_env(tmp_path)
    # A finished trial is a committed part first; compaction into trials.parquet comes at the end.
    sigkill_driver_when(spec_path, env, lambda: (job / "parts").is_dir()
                        and any(p.suffix == ".arrow" for p in (job / "parts").iterdir()), "trial finished")
    before = {r["trial_id"]: r for r in ResultsStore(job).read_trials().to_pylist()}  # tables + parts
    assert 1 <= len(before) < 4

    rerun = run_cli(["run", str(spec_path)], env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"skipping {len(before)} finished trials" in rerun.stdout
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    assert {r["status"] for r in rows} == {"completed"}
    for r in rows:  # finished trials were not retrained
        if r["trial_id"] in before:
            assert r["finished_at"] == before[r["trial_id"]]["finished_at"]
    evals = pq.read_table(job / "evals.parquet").to_pylist()
    assert len(evals) == 4 * 2 and len({(e["trial_id"], e["step"]) for e in evals}) == 8


def test_sigterm_stops_the_sweep_writes_what_finished_and_says_interrupted(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="term", output=str(tmp_path / "results"))
    spec["resources"]["max_concurrent"] = 1
    spec["train"]["max_steps"] = 40
    spec_path = write_spec(tmp_path / "term.yaml", spec)
    job = tmp_path / "results" / "term"
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec_path)],
        cwd=REPO, env=ray_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        for line in driver.stdout:  # wait until the first trial has finished and the second runs
            if "progress: 1/4 done" in line:
                break
        driver.send_signal(signal.SIGTERM)
        out, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, out
    assert "SIGTERM received" in out and "interrupted" in out and "Traceback" not in out
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert 1 <= len(rows) < 4 and {r["status"] for r in rows} == {"completed"}
    assert (job / "report.html").is_file()
