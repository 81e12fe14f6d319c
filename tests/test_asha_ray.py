"""Successive halving on the real engine: pause/resume through the actor (no Ray), then one
real-Ray sweep whose driver is SIGKILLed between rungs and rerun."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import TINY_SPEC, ray_env, run_cli, sigkill_driver_when, write_spec
from orchestrator.results import ResultsStore
from orchestrator.run.actor import TrainerActor
from orchestrator.run.events import Ended, Evaluated, Paused
from orchestrator.spec import build_job
from orchestrator.spec.rungs import asha_rungs, worst_promotions
from rnn.events import TrialStatus


def _asha_spec(tmp_path: Path, name: str) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name=name, output=str(tmp_path / "results"))
    spec["train"].update(max_steps=40, eval_every=10)
    spec["sweep"]["scheduler"] = {"type": "asha", "grace_steps": 10, "reduction_factor": 2}
    spec["resources"]["max_concurrent"] = 1
    return spec


@pytest.mark.slow
def test_the_actor_pauses_at_its_rung_and_resumes_to_the_uninterrupted_curve(tmp_path: Path) -> None:
    trial = build_job(_asha_spec(tmp_path, "actor")).trials[0]
    actor = TrainerActor(num_threads=1)
    whole = list(actor.run(trial.trial_id, trial.run_config))
    first = list(actor.run(trial.trial_id, trial.run_config, pause_at=20))
    paused = first[-1]
    assert isinstance(paused, Paused) and paused.step == 20 and paused.result.status is TrialStatus.PAUSED
    assert [e.record.step for e in first if isinstance(e, Evaluated)] == [10, 20]
    rest = list(actor.run(trial.trial_id, trial.run_config, resume=paused.data))
    end, full_end = rest[-1], whole[-1]
    assert isinstance(end, Ended) and isinstance(full_end, Ended) and end.result is not None
    assert end.result.status is TrialStatus.COMPLETED and end.result.steps == 40
    assert full_end.result is not None
    assert [r.val_loss for r in end.result.evals] == [r.val_loss for r in full_end.result.evals]


@pytest.mark.ray
def test_driver_killed_between_rungs_then_rerun_keeps_the_rungs(tmp_path: Path) -> None:
    spec = _asha_spec(tmp_path, "halving")
    spec_path = write_spec(tmp_path / "halving.yaml", spec)
    job = tmp_path / "results" / "halving"
    env = ray_env(tmp_path)
    # two trials paused at a rung: kill between rungs
    sigkill_driver_when(spec_path, env, lambda: (job / "parts").is_dir()
                        and len(list((job / "parts").glob("*.paused.*.arrow"))) >= 2, "two trials paused")
    paused_before = ResultsStore(job).finished_trial_ids({"paused"})
    assert paused_before and all((job / "checkpoints" / t / "last.pt").is_file() for t in paused_before)

    rerun = run_cli(["run", str(spec_path)], env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "paused trials found on disk" in rerun.stdout + rerun.stderr
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4  # one row per trial
    assert {r["status"] for r in rows} <= {"completed", "pruned"}
    completed = [r for r in rows if r["status"] == "completed"]
    assert completed and all(r["steps"] == 40 for r in completed)
    assert all(r["steps"] in (10, 20) for r in rows if r["status"] == "pruned")
    assert all((job / r["checkpoint"]).is_file() for r in rows)  # pruned trials keep their best checkpoint
    assert not list(job.glob("checkpoints/*/last.pt"))  # resume points go once trials end
    evals = pq.read_table(job / "evals.parquet").to_pylist()
    assert len({(e["trial_id"], e["step"]) for e in evals}) == len(evals)
    # the rung decisions: no rung promoted more than asynchronous halving can, and the trial
    # that completed passed every rung
    rungs = asha_rungs(10, 2, 40)
    most = worst_promotions(4, len(rungs) - 1, 2)
    for k, step in enumerate(rungs[:-1]):
        assert sum(r["steps"] > step for r in rows) <= most[k]
    for r in completed:
        assert {e["step"] for e in evals if e["trial_id"] == r["trial_id"]} >= set(rungs)
    # paused trials that were promoted resumed from their rung, not from scratch
    out = rerun.stdout + rerun.stderr
    promoted_again = [t for t in paused_before if next(r for r in rows if r["trial_id"] == t)["steps"] > 10]
    for tid in promoted_again:
        assert f"{tid}" in out and "from checkpoint at step" in out

    # best: the completed trial with the lowest validation loss, as a spec that validates
    best = run_cli(["best", str(job)], env)
    assert best.returncode == 0, best.stderr
    winner = min(completed, key=lambda r: r["best_val_loss"])
    assert f"trial {winner['trial_id']} (completed)" in best.stdout
    (tmp_path / "best.yaml").write_text(best.stdout, encoding="utf-8")
    checked = run_cli(["validate", str(tmp_path / "best.yaml")], env)
    assert checked.returncode == 0 and "ok (1 trial)" in checked.stdout, checked.stdout + checked.stderr
