"""A TPE + successive-halving sweep on real Ray whose driver is SIGKILLed mid-search, then rerun;
and ``best`` on the job it leaves."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import ray_env, run_cli, sigkill_driver_when, tpe_spec, write_spec
from orchestrator.results import ResultsStore
from orchestrator.results.proposals import read_proposals
from orchestrator.run.search import load_search
from orchestrator.spec import build_job, load_job


@pytest.mark.ray
def test_driver_killed_mid_search_then_rerun_loses_and_repeats_nothing(tmp_path: Path) -> None:
    spec = tpe_spec(tmp_path, name="search", samples=6, startup=2)
    spec["train"]["max_steps"] = 80  # rungs at 10, 20, 40: time to kill it between proposals
    spec_path = write_spec(tmp_path / "search.yaml", spec)
    job_dir = tmp_path / "results" / "search"
    env = ray_env(tmp_path)
    sigkill_driver_when(spec_path, env, lambda: len(list((job_dir / "search").glob("0*.json"))) >= 3
                        and len(list((job_dir / "parts").glob("*.arrow"))) >= 2, "three proposals and two parts")

    store = ResultsStore(job_dir)
    store.compact()
    before = read_proposals(store)
    rows_before = {r["trial_id"]: r for r in store.read_trials().to_pylist()}
    ended_before = {tid for tid, r in rows_before.items() if r["status"] not in ("paused", "failed")}
    job = build_job(spec)
    assert job.search is not None
    search, trials = load_search(job.search, job.spec.sweep, store)  # what the rerun starts from
    assert [t.trial_id for t in trials] == [tid for r in before for tid in r.trial_ids]
    assert search.remaining == 6 - len([r for r in before if r.accepted])

    rerun = run_cli(["run", str(spec_path)], env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = read_proposals(ResultsStore(job_dir))
    assert after[: len(before)] == before  # the proposals made before the kill stand
    accepted = [r for r in after if r.accepted]
    assert len(accepted) == 6
    ids = [tid for r in accepted for tid in r.trial_ids]
    rows = pq.read_table(job_dir / "trials.parquet").to_pylist()
    assert sorted(r["trial_id"] for r in rows) == sorted(ids) and len(set(ids)) == 6  # one row each
    assert {r["status"] for r in rows} <= {"completed", "pruned"}
    by_id = {r["trial_id"]: r for r in rows}
    for tid in ended_before:  # ended before the kill: not run again
        assert by_id[tid]["finished_at"] == rows_before[tid]["finished_at"]
    evals = pq.read_table(job_dir / "evals.parquet").to_pylist()
    assert len({(e["trial_id"], e["step"]) for e in evals}) == len(evals)

    best = run_cli(["best", str(job_dir)], env)
    assert best.returncode == 0, best.stderr
    best_path = tmp_path / "best.yaml"
    best_path.write_text(best.stdout, encoding="utf-8")
    best_job = load_job(best_path)
    assert best_job.search is None and len(best_job.trials) == 1
    winner = min((r for r in rows if r["status"] == "completed"), key=lambda r: r["best_val_loss"])
    assert best_job.trials[0].trial_id == winner["trial_id"]  # the same config: the same trial id
