"""``sweep.tpe``: the spec, proposals as trials, the study rebuilt from the job folder (resume is
exact), and TPE with successive halving on the real trainer (no Ray; the driver-kill test on
real Ray is in tests/test_tpe_ray.py)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import TPE_SPACE, completed_row, eval_curve, tpe_spec
from orchestrator.errors import ExitCode, SpecError, UsageError
from orchestrator.results import ResultsStore
from orchestrator.results.proposals import read_proposals
from orchestrator.run import LocalBackend, run_job
from orchestrator.run.local_backend import LocalBackend as _Local
from orchestrator.run.scheduler import RunToEnd
from orchestrator.run.search import SearchScheduler, load_search
from orchestrator.run.tpe import TpeSearch
from orchestrator.spec import build_job, trial_config
from rnn.events import TrialStatus


def problems_of(spec: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as e:
        build_job(spec, source="s.yaml")
    return e.value.lines()


# --- the spec ---------------------------------------------------------------------------------------


def test_a_tpe_job_has_no_trials_up_front_and_a_search_of_samples_times_seeds(tmp_path: Path) -> None:
    spec = tpe_spec(tmp_path, samples=5)
    spec["sweep"]["seeds"] = [0, 1]
    job = build_job(spec)
    assert job.trials == () and job.search is not None
    assert job.search.total_trials == 10 and job.search.seeds == (0, 1)
    assert job.search.metric == "val_loss"  # the scheduler's
    assert [t.overrides["train.seed"] for t in job.search.base_trials] == [0, 1]


def test_tpe_problems_are_all_reported_at_once_with_their_paths(tmp_path: Path) -> None:
    spec = tpe_spec(tmp_path)
    spec["sweep"]["random"] = {"samples": 2, "space": {"train.lr": {"dist": "uniform", "low": 0.1, "high": 0.2}}}
    spec["sweep"]["variants"] = [{"model.cell": "gru"}]
    spec["sweep"]["tpe"]["space"]["model.dropout"]["high"] = 1.5
    spec["sweep"]["tpe"]["space"]["train.lrr"] = {"dist": "uniform", "low": 0.1, "high": 0.2}
    spec["sweep"]["tpe"]["space"]["model.num_layers"] = {"dist": "int", "low": 3, "high": 1}
    spec["sweep"]["tpe"]["metric"] = "val_bpc"
    spec["sweep"]["tpe"]["samples"] = 0
    text = "\n".join(problems_of(spec))
    assert "sweep.tpe: cannot be combined with sweep.random" in text
    assert "sweep.variants: cannot be combined with sweep.tpe" in text
    assert "sweep.tpe.space.model.dropout.high: should be less than 1" in text
    assert "sweep.tpe.space.train.lrr: no such setting; did you mean train.lr?" in text
    assert "sweep.tpe.space.model.num_layers" in text and "low must be less than high" in text
    assert "sweep.tpe.samples" in text


def test_a_throughput_job_cannot_search(tmp_path: Path) -> None:
    spec = tpe_spec(tmp_path, asha=False)
    spec["kind"] = "throughput"
    spec["sweep"]["tpe"]["space"] = {"train.lr": TPE_SPACE["train.lr"]}
    assert any(line.startswith("s.yaml: sweep.tpe: needs kind: train") for line in problems_of(spec))


def test_the_tpe_metric_must_be_the_schedulers(tmp_path: Path) -> None:
    spec = tpe_spec(tmp_path, metric="val_bpc")
    assert any("sweep.tpe.metric: should be the scheduler's metric (val_loss)" in line for line in problems_of(spec))
    spec["sweep"]["scheduler"]["metric"] = "val_bpc"
    assert build_job(spec).search.metric == "val_bpc"  # type: ignore[union-attr]


def test_a_proposal_is_the_trial_a_grid_cell_with_its_values_would_be(tmp_path: Path) -> None:
    job = build_job(tpe_spec(tmp_path))
    assert job.search is not None
    values = {"train.lr": 0.01, "model.hidden_size": 32, "model.dropout": 0.1}
    trials, problems = job.search.trials_for(values, 3)
    assert not problems and len(trials) == 1 and trials[0].index == 3
    grid = tpe_spec(tmp_path, asha=False)
    grid["sweep"] = {"grid": {path: [value] for path, value in values.items()}, "seeds": [0]}
    assert build_job(grid).trials[0].trial_id == trials[0].trial_id
    assert trial_config(trials[0])["model"]["dropout"] == 0.1


def test_a_proposal_a_rule_refuses_is_named_where_the_search_put_it(tmp_path: Path) -> None:
    spec = tpe_spec(tmp_path, asha=False)
    spec["sweep"]["tpe"]["space"]["model.layer_norm"] = {"dist": "choice", "values": [False, True]}
    spec["sweep"]["tpe"]["space"]["model.cell"] = {"dist": "choice", "values": ["lstm", "gru"]}
    job = build_job(spec)
    assert job.search is not None
    trials, problems = job.search.trials_for({"model.cell": "gru", "model.layer_norm": True}, 0)
    assert not trials and problems
    assert problems[0].path.startswith("sweep.tpe.space.model.")
    assert "(proposal 0)" in problems[0].path


# --- the study, rebuilt from the records --------------------------------------------------------------


def _outcome(values: dict[str, Any]) -> float:
    """A made-up validation loss with a minimum inside the space."""
    return (math.log10(values["train.lr"]) + 2.0) ** 2 + values["model.dropout"] + values["model.hidden_size"] / 100


def test_the_study_is_rebuilt_from_the_job_folder_and_asks_what_the_live_one_would(tmp_path: Path) -> None:
    """Proposals, then some trials end (committed as a run commits them); a second search loaded
    from the folder makes exactly the live search's next proposals."""
    job = build_job(tpe_spec(tmp_path, samples=12, startup=3, asha=False))
    assert job.search is not None
    store = ResultsStore(tmp_path / "results" / "tpe")
    live_search, recorded = load_search(job.search, job.spec.sweep, store)
    assert recorded == []
    live = SearchScheduler(live_search, job.search, store, RunToEnd())
    made = []
    for _ in range(6):
        (trial,) = live.propose()
        made.append(trial)
    for trial in made[:4]:  # four end, two are still running when the driver dies
        loss = _outcome(trial.overrides)
        row = completed_row(trial.trial_id, loss, trial_config(trial))
        store.commit_trial(row, evals=eval_curve(loss))
        live.on_ended(trial.trial_id, TrialStatus.COMPLETED, row, eval_curve(loss))

    replayed_search, trials = load_search(job.search, job.spec.sweep, store)
    assert [t.trial_id for t in trials] == [t.trial_id for t in made]
    replayed = SearchScheduler(replayed_search, job.search, store_copy(tmp_path, store), RunToEnd())
    for _ in range(4):
        assert [t.trial_id for t in replayed.propose()] == [t.trial_id for t in live.propose()]
    records = read_proposals(store)
    assert [r.from_model for r in records] == [False] * 6 + [True] * 4  # made before 3 had ended: start-up draws


def store_copy(tmp_path: Path, store: ResultsStore) -> ResultsStore:
    """The replayed search writes its records to a copy, so both sides can go on."""
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(store.job_dir, target)
    return ResultsStore(target)


def test_the_study_counts_a_trial_paused_at_a_rung_as_pruned_there_until_it_ends(tmp_path: Path) -> None:
    job = build_job(tpe_spec(tmp_path, samples=4))
    assert job.search is not None
    search = TpeSearch(job.search.tpe, "val_loss", rung_steps=(10, 20))
    number, params, from_model = search.ask()
    from orchestrator.results.proposals import ProposalRecord

    search.add(ProposalRecord(number, params, {}, from_model, trial_ids=("a",)))
    assert search.frozen(search.records[0]).state.name == "RUNNING"
    search.trial_paused("a", eval_curve(3.0, steps=(10,)))
    frozen = search.frozen(search.records[0])
    assert frozen.state.name == "PRUNED" and frozen.intermediate_values == {10: pytest.approx(3.1)}
    search.trial_ended("a", "completed", 2.5, eval_curve(2.5, steps=(10, 20, 40)))
    frozen = search.frozen(search.records[0])
    assert frozen.state.name == "COMPLETE" and frozen.value == 2.5


def test_the_proposals_of_another_space_are_refused_on_resume(tmp_path: Path) -> None:
    spec = tpe_spec(tmp_path, asha=False)
    job = build_job(spec)
    assert job.search is not None
    store = ResultsStore(tmp_path / "results" / "tpe")
    search, _ = load_search(job.search, job.spec.sweep, store)
    SearchScheduler(search, job.search, store, RunToEnd()).propose()
    spec["sweep"]["tpe"]["samples"] = 9  # may change
    wider = build_job(spec)
    assert wider.search is not None
    assert load_search(wider.search, wider.spec.sweep, store)[0].remaining == 8
    spec["sweep"]["tpe"]["space"]["model.dropout"]["high"] = 0.5
    other = build_job(spec)
    assert other.search is not None
    with pytest.raises(UsageError, match=r"another sweep.tpe \(space changed\).*--fresh"):
        load_search(other.search, other.spec.sweep, store)
    spec["sweep"]["tpe"]["space"]["model.dropout"]["high"] = 0.3
    spec["train"]["max_steps"] = 30  # the same proposals now make other trials
    changed = build_job(spec)
    assert changed.search is not None
    with pytest.raises(UsageError, match="the spec changed since the search began"):
        load_search(changed.search, changed.spec.sweep, store)


# --- on the real trainer ----------------------------------------------------------------------------


class _StopAfterPolls(_Local):
    """The in-process backend, stopping the driver (as a signal would) after ``polls`` turns."""

    def __init__(self, stop: threading.Event, polls: int) -> None:
        super().__init__(workers=2)
        self._stop, self._left = stop, polls

    def poll(self, timeout: float) -> Any:
        self._left -= 1
        if self._left <= 0:
            self._stop.set()
        return super().poll(timeout)


def _summary(job_dir: Path) -> tuple[list[dict[str, Any]], dict[str, tuple[str, Any, Any]]]:
    store = ResultsStore(job_dir)
    records = [{"params": r.params, "from_model": r.from_model, "trial_ids": r.trial_ids}
               for r in read_proposals(store)]
    rows = {r["trial_id"]: (r["status"], r["steps"], r["best_val_loss"]) for r in store.read_trials().to_pylist()}
    return records, rows


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_cache")
def test_tpe_with_asha_on_the_real_trainer_and_an_interrupted_run_resumes_exactly(tmp_path: Path) -> None:
    """A whole TPE + ASHA sweep; then one stopped after a few turns and run again: what was
    proposed stays, nothing finished runs again, every proposal gets its one row. (Which points
    come after the stop depends on what had finished by then, as it would for an uninterrupted
    run in that state: that equality is tested directly above.)"""
    whole = build_job(tpe_spec(tmp_path, name="whole"))
    assert run_job(whole, backend=LocalBackend(workers=2), live_report_s=0).exit_code == ExitCode.OK
    records, rows = _summary(tmp_path / "results" / "whole")
    assert len(records) == 6 and [r["from_model"] for r in records][:3] == [False] * 3
    assert any(r["from_model"] for r in records)
    assert len(rows) == 6 == len({tid for r in records for tid in r["trial_ids"]})
    statuses = sorted(status for status, _, _ in rows.values())
    assert "completed" in statuses and "pruned" in statuses and set(statuses) <= {"completed", "pruned"}

    job = build_job(tpe_spec(tmp_path, name="split"))
    stop = threading.Event()
    first = run_job(job, backend=_StopAfterPolls(stop, polls=15), stop=stop, live_report_s=0)
    assert first.exit_code == ExitCode.INTERRUPTED
    before, rows_before = _summary(tmp_path / "results" / "split")
    assert 0 < len(before) < 6
    assert run_job(job, backend=LocalBackend(workers=2), live_report_s=0).exit_code == ExitCode.OK
    after, rows_after = _summary(tmp_path / "results" / "split")
    assert after[: len(before)] == before  # what was proposed stays
    assert len(after) == 6 and len(rows_after) == 6 == len({tid for r in after for tid in r["trial_ids"]})
    assert {status for status, _, _ in rows_after.values()} <= {"completed", "pruned"}
    assert after[0] == records[0]  # the same seed: the same first draw
    finished = {tid for tid, (status, _, _) in rows_before.items() if status != "paused"}
    assert all(rows_after[tid] == rows_before[tid] for tid in finished)  # not run again
    study = json.loads((tmp_path / "results" / "split" / "search" / "study.json").read_text())
    assert study["metric"] == "val_loss" and set(study["space"]) == set(TPE_SPACE)
