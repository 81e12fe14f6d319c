"""Faults on real local Ray: a worker process that dies is a lost actor, retried from the driver's
checkpoint; OOM / NaN / errors are recorded, not retried.

The same drill without Ray, and the driver killed or stopped, are in ``test_local_backend.py``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import TINY_SPEC, ray_env, run_cli, write_spec
from orchestrator.spec import load_job, trial_config


def _ids_by_cell_seed(spec_path: Path) -> dict[tuple[str, int], str]:
    trials = load_job(spec_path).trials
    return {(trial_config(t)["model"]["cell"], trial_config(t)["train"]["seed"]): t.trial_id for t in trials}


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
