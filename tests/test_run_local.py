"""End to end on embedded local Ray: `python -m orchestrator run` writes results, resumes, widens."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import pyarrow.parquet as pq

from conftest import TINY_SPEC, ray_env, run_cli, write_spec


pytestmark = pytest.mark.ray  # a real Ray driver in a subprocess


def test_local_sweep_writes_results_then_resumes_and_widens(tmp_path: Path) -> None:
    spec = dict(TINY_SPEC, output=str(tmp_path / "results"))
    spec_path = write_spec(tmp_path / "tiny.yaml", spec)
    env = ray_env(tmp_path)
    job = tmp_path / "results" / "tiny"

    first = run_cli(["run", str(spec_path)], env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    assert "progress: 4/4 done, 0 running, 0 failed" in first.stdout
    assert f"results: {job}" in first.stdout

    trials = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(trials) == 4 and {t["status"] for t in trials} == {"completed"}
    assert sorted((t["model.cell"], t["train.seed"]) for t in trials) == [
        ("gru", 0), ("gru", 1), ("lstm", 0), ("lstm", 1)
    ]
    for t in trials:
        assert t["steps"] == 20 and t["best_val_loss"] > 0 and t["params"] > 0 and t["device"] == "cpu"
        assert t["checkpoint"] == f"checkpoints/{t['trial_id']}/best.pt"
        assert (job / t["checkpoint"]).is_file()  # the checkpoint travelled back to the driver
    evals = pq.read_table(job / "evals.parquet").to_pylist()
    assert len(evals) == 8 and sorted({e["step"] for e in evals}) == [10, 20]
    html = (job / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html and "model.cell=gru" in html
    assert (job / "report.md").is_file()
    manifest = json.loads((job / "manifest.json").read_text())
    assert manifest["name"] == "tiny" and len(manifest["corpus_sha256"]["builtin"]) == 64
    assert manifest["devices"] and manifest["devices"][0]["device"] == "cpu"
    finished_at = {t["trial_id"]: t["finished_at"] for t in trials}

    # The same command again: nothing reruns.
    again = run_cli(["run", str(spec_path)], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "skipping 4 finished trials" in again.stdout
    assert "started (attempt" not in again.stdout
    assert {t["trial_id"]: t["finished_at"] for t in pq.read_table(job / "trials.parquet").to_pylist()} == finished_at

    # A wider grid: only the new cells run.
    wider = copy.deepcopy(spec)
    wider["sweep"]["grid"]["model.cell"] = ["lstm", "gru", "rnn"]
    write_spec(spec_path, wider)
    third = run_cli(["run", str(spec_path)], env)
    assert third.returncode == 0, third.stdout + third.stderr
    assert "skipping 4 finished trials" in third.stdout
    assert third.stdout.count("started (attempt 1)") == 2
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert {r["trial_id"]: r["finished_at"] for r in rows if r["trial_id"] in finished_at} == finished_at
    assert len(pq.read_table(job / "evals.parquet")) == 12
