"""Successive halving (ASHA): the rung logic alone, then the real Dispatcher over a simulated backend.

The simulated backend trains nothing: each trial's validation loss is ``base + 10 / step``, so
its rank never changes with the budget and the right answer is known. A launch streams the
evaluations from where the assignment resumes up to its ``pause_at`` (then ``Paused`` with a
resume checkpoint) or to ``max_steps`` (then ``Ended``). The real-Ray test with a driver kill
between rungs is in test_asha_ray.py.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from pathlib import Path
from typing import Any, Optional

import pytest
from test_dispatch import START, ScriptedBackend, _ckpt

from conftest import TINY_SPEC, eval_record
from orchestrator.errors import SpecError
from orchestrator.results import ResultsStore
from orchestrator.run.asha import Asha, budget_steps, promotion_caps, worst_budget_steps
from orchestrator.run.backend import Assignment
from orchestrator.run.dispatch import Dispatcher
from orchestrator.run.events import Checkpointed, Ended, Evaluated, Paused
from orchestrator.run.scheduler import load_scheduler
from orchestrator.spec import build_job
from orchestrator.spec.rungs import asha_rungs
from rnn.events import TrainResult, TrialStatus

# --- the rung logic ------------------------------------------------------------------------


def test_rungs_grow_by_the_reduction_factor_and_end_at_max_steps() -> None:
    assert asha_rungs(10, 3, 90) == (10, 30, 90)
    assert asha_rungs(10, 3, 100) == (10, 30, 90, 100)
    assert asha_rungs(10, 2, 25) == (10, 20, 25)


def test_budgets_synchronous_and_worst_case() -> None:
    assert promotion_caps(9, 2, 3) == [3, 1]
    assert promotion_caps(2, 2, 3) == [1, 1]  # a closed rung always promotes its best
    # 9 trials x 10 steps, 3 x 20 more, 1 x 60 more; the full grid is 9 x 90
    assert budget_steps(9, (10, 30, 90), 3) == 9 * 10 + 3 * 20 + 1 * 60
    assert budget_steps(16, (10, 30, 90), 3) == 16 * 10 + 5 * 20 + 1 * 60
    # worst order: each arrival from the third on is promoted: 9 -> 7 -> 5
    assert worst_budget_steps(9, (10, 30, 90), 3) == 9 * 10 + 7 * 20 + 5 * 60
    assert worst_budget_steps(2, (10, 30, 90), 3) == 2 * 10 + 1 * 20 + 1 * 60


def _asha(n: int) -> Asha:
    return Asha((10, 30, 90), 3, "val_loss", n)


def test_a_trial_is_promoted_as_soon_as_it_is_in_the_top_third() -> None:
    asha = _asha(9)
    asha.record("a", 0, 3.0)
    asha.record("b", 0, 2.0)
    assert asha.decide([0] * 7) == ([], [])  # 2 recorded: top floor(2/3) = 0
    asha.record("c", 0, 1.0)
    promote, prune = asha.decide([0] * 6)
    assert [d.trial_id for d in promote] == ["c"] and promote[0].rank == 1 and prune == []
    assert asha.paused == {"a": 0, "b": 0}


def test_the_worst_arrival_order_promotes_n_minus_rf_plus_one() -> None:
    asha = _asha(9)
    promoted = []
    for i, tid in enumerate("abcdefghi"):  # each newcomer is the best so far
        asha.record(tid, 0, 10.0 - i)
        promote, _ = asha.decide([0] * (8 - i) + [1] * len(promoted))
        promoted += [d.trial_id for d in promote]
    assert promoted == list("cdefghi")  # 9 - 3 + 1, as worst_budget_steps assumes


def test_a_late_better_arrival_is_still_promoted() -> None:
    asha = _asha(9)
    for tid, value in zip("abc", (3.0, 2.0, 1.0), strict=True):
        asha.record(tid, 0, value)
    assert [d.trial_id for d in asha.decide([0] * 6)[0]] == ["c"]
    for tid, value in zip("def", (5.0, 6.0, 0.5), strict=True):  # f is the best of all
        asha.record(tid, 0, value)
    assert [d.trial_id for d in asha.decide([0] * 3 + [1])[0]] == ["f"]  # top 2 of 6: f and c


def test_a_closed_rung_prunes_the_rest_and_promotes_at_least_one() -> None:
    asha = _asha(2)
    asha.record("a", 0, 2.0)
    assert asha.decide([0]) == ([], [])  # b may still arrive
    asha.record("b", 0, 1.0)
    promote, prune = asha.decide([])  # nothing else can arrive: closed
    assert [d.trial_id for d in promote] == ["b"]
    assert [d.trial_id for d in prune] == ["a"] and prune[0].rank == 2
    # b is headed for rung 1: rung 1 stays open until it arrives there
    asha.record("b", 1, 0.5)
    promote, prune = asha.decide([])
    assert [d.trial_id for d in promote] == ["b"] and promote[0].rung == 1


def test_a_rung_stays_open_while_a_trial_below_may_still_be_promoted() -> None:
    asha = _asha(9)
    for i, tid in enumerate("abc"):
        asha.record(tid, 0, float(i))
    promote, _ = asha.decide([0] * 6)
    assert [d.trial_id for d in promote] == ["a"]
    asha.record("a", 1, 0.1)
    promote, prune = asha.decide([0] * 6)  # six trials not run yet: rung 1 must wait for them
    assert promote == [] and prune == []


def test_a_non_finite_metric_ranks_last() -> None:
    asha = _asha(3)
    rec = eval_record(10, math.nan)
    assert asha.value_of([rec], 10) == math.inf
    assert asha.value_of([], 10) == math.inf


# --- the spec -------------------------------------------------------------------------------


def _spec(n_lr: int = 9, **scheduler: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY_SPEC)
    raw["train"].update(max_steps=90, eval_every=10)
    raw["sweep"] = {"grid": {"train.lr": [0.001 * (i + 1) for i in range(n_lr)]},
                    "scheduler": {"type": "asha", "grace_steps": 10, "reduction_factor": 3, **scheduler}}
    raw["resources"].update(max_concurrent=2)
    return raw


def test_scheduler_max_steps_is_taken_from_train_and_must_agree() -> None:
    job = build_job(_spec(), source="<t>")
    assert job.spec.sweep is not None and job.spec.sweep.scheduler is not None
    assert job.spec.sweep.scheduler.max_steps == 90
    with pytest.raises(SpecError) as e:
        build_job(_spec(max_steps=80), source="<t>")
    assert "sweep.scheduler.max_steps: should equal train.max_steps (90)" in str(e.value)
    with pytest.raises(SpecError) as e:
        build_job(_spec(grace_steps=90), source="<t>")
    assert "sweep.scheduler.grace_steps: should be below max_steps (90)" in str(e.value)
    raw = _spec()
    raw["sweep"]["grid"]["train.max_steps"] = [50, 90]
    with pytest.raises(SpecError) as e:
        build_job(raw, source="<t>")
    assert "train.max_steps cannot be swept under successive halving" in str(e.value)
    raw = _spec()
    raw["sweep"]["scheduler"]["type"] = "hyperband"
    with pytest.raises(SpecError) as e:
        build_job(raw, source="<t>")
    assert "sweep.scheduler.type" in str(e.value)


# --- the dispatcher over a simulated backend -------------------------------------------------


def _loss(base: float, step: int) -> float:
    return base + 10.0 / step


class HalvingBackend(ScriptedBackend):
    """Streams a trial's curve from its resume step to its pause point or max_steps."""

    def __init__(self, bases: dict[str, float], max_steps: int = 90, every: int = 10,
                 on_pause: Optional[Any] = None) -> None:
        super().__init__({})
        self.bases, self.max_steps, self.every = bases, max_steps, every
        self.steps_trained = 0
        self.on_pause = on_pause
        self.pauses = 0

    def launch(self, worker: int, a: Assignment) -> None:
        self.launched.append(a)
        start = int(__import__("torch").load(__import__("io").BytesIO(a.resume))["step"]) if a.resume else 0
        stop = a.pause_at if a.pause_at is not None else self.max_steps
        base = self.bases[a.trial_id]
        evals = [eval_record(s, _loss(base, s)) for s in range(self.every, stop + 1, self.every)]
        steps: list[Any] = [START]
        for r in evals:
            if r.step > start:
                steps += [Evaluated(r), Checkpointed(r.step, _ckpt(r.step))]
        self.steps_trained += stop - start
        status = TrialStatus.PAUSED if a.pause_at is not None else TrialStatus.COMPLETED
        last = evals[-1]
        result = TrainResult(status=status, steps=stop, params=10, device="cpu", precision="fp32", train_time_s=1.0,
                             best_val_loss=last.val_loss, best_val_bpc=last.val_bpc,
                             best_val_accuracy=last.val_accuracy, best_step=stop, best_checkpoint="x/best.pt",
                             evals=tuple(evals))
        steps.append(Paused(stop, _ckpt(stop), result) if a.pause_at is not None else Ended(result))
        self.running[worker] = steps

    def poll(self, timeout_s: float) -> list:
        notices = super().poll(timeout_s)
        for n in notices:
            if isinstance(n.event, Paused):
                self.pauses += 1
                if self.on_pause is not None:
                    self.on_pause(self)
        return notices


def _job_and_bases(n: int = 9) -> tuple[Any, dict[str, float]]:
    job = build_job(_spec(n), source="<t>")
    # a fixed, scrambled order of quality: trial i's base loss
    order = [5, 2, 8, 0, 7, 3, 6, 1, 4][:n]
    return job, {t.trial_id: 1.0 + 0.1 * order[i] for i, t in enumerate(job.trials)}


def _dispatch(job: Any, store: ResultsStore, backend: HalvingBackend,
              stop: Optional[threading.Event] = None, trials: Optional[list] = None) -> Dispatcher:
    scheduler = job.spec.sweep.scheduler
    todo = trials if trials is not None else list(job.trials)
    d = Dispatcher(todo, job.spec.resources, store, backend, total=len(job.trials), stop=stop,
                   scheduler=load_scheduler(scheduler, list(job.trials), store))
    d.run()
    return d


def test_asha_completes_the_best_trial_prunes_the_rest_within_budget(tmp_path: Path) -> None:
    job, bases = _job_and_bases()
    store = ResultsStore(tmp_path / "job")
    backend = HalvingBackend(bases)
    summary_dispatcher = _dispatch(job, store, backend)
    rows = {r["trial_id"]: r for r in store.read_trials().to_pylist()}
    assert len(rows) == 9 and store.read_trials().num_rows == 9  # one row per trial
    best = min(bases, key=lambda t: bases[t])
    assert rows[best]["status"] == "completed" and rows[best]["steps"] == 90
    statuses = sorted(r["status"] for r in rows.values())
    assert statuses.count("completed") >= 1 and set(statuses) <= {"completed", "pruned"}
    assert backend.steps_trained <= worst_budget_steps(9, (10, 30, 90), 3) < 9 * 90
    pruned = [r for r in rows.values() if r["status"] == "pruned"]
    assert all(r["steps"] in (10, 30) and r["checkpoint"] == f"checkpoints/{r['trial_id']}/best.pt" for r in pruned)
    evals = store.read_evals().to_pylist()
    assert {e["step"] for e in evals if e["trial_id"] == best} == set(range(10, 91, 10))  # the whole curve
    # no resume point is left behind, and a promoted trial resumed from its rung's checkpoint
    assert not list((tmp_path / "job" / "checkpoints").glob("*/last.pt"))
    resumed = [a for a in backend.launched if a.resume is not None]
    assert resumed and all(a.pause_at in (30, None) for a in resumed)
    assert summary_dispatcher.recorder.statuses.get("paused") is None


def test_a_pruned_trials_duration_is_its_running_time_not_its_wait_at_the_rung(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The last trial to reach the first rung takes 1 s to arrive there, so every trial paused at
    # that rung before it waits at least 1 s; the trials pruned there ran for milliseconds.
    from orchestrator.run.progress import Progress

    finished: list[tuple[str, float]] = []
    real = Progress.trial_finished

    def trial_finished(self: Progress, tag: str, message: str, duration_s: float, ok: bool,
                       running: bool = True) -> None:
        finished.append((message, duration_s))
        real(self, tag, message, duration_s, ok, running)

    monkeypatch.setattr(Progress, "trial_finished", trial_finished)

    class SlowLastArrival(HalvingBackend):
        arrived = 0

        def poll(self, timeout_s: float) -> list:
            notices = super().poll(timeout_s)
            for n in notices:
                if isinstance(n.event, Paused) and n.event.step == 10:
                    self.arrived += 1
                    if self.arrived == 9:
                        time.sleep(1.0)
            return notices

    job, bases = _job_and_bases()
    _dispatch(job, ResultsStore(tmp_path / "job"), SlowLastArrival(bases))
    at_first_rung = [d for m, d in finished if m.startswith("pruned: at rung 10,")]
    assert len(at_first_rung) >= 3, finished
    # the last arrival's own running time holds the second; the others' does not
    assert sum(d < 0.9 for d in at_first_rung) >= len(at_first_rung) - 1, finished


def test_a_driver_stopped_between_rungs_resumes_with_the_same_decisions(tmp_path: Path) -> None:
    job, bases = _job_and_bases()
    full_store = ResultsStore(tmp_path / "full")
    _dispatch(job, full_store, HalvingBackend(bases))
    expected = {r["trial_id"]: (r["status"], r["steps"]) for r in full_store.read_trials().to_pylist()}

    store = ResultsStore(tmp_path / "job")
    stop = threading.Event()

    def stop_after_five(backend: HalvingBackend) -> None:
        if backend.pauses == 5:
            stop.set()

    _dispatch(job, store, HalvingBackend(bases, on_pause=stop_after_five), stop=stop)
    paused = store.finished_trial_ids({"paused"})
    assert paused and list((tmp_path / "job" / "checkpoints").glob("*/last.pt"))
    store.compact()  # as the next run does first
    done = store.finished_trial_ids({"completed", "pruned"})
    rerun = [t for t in job.trials if t.trial_id not in done]
    backend = HalvingBackend(bases)
    _dispatch(job, ResultsStore(tmp_path / "job"), backend, trials=rerun)
    store.compact()
    rows = store.read_trials().to_pylist()
    assert len(rows) == 9
    assert {r["trial_id"]: (r["status"], r["steps"]) for r in rows} == expected
    # the paused trials resumed from their rung's checkpoint, not from scratch
    assert {a.trial_id for a in backend.launched if a.resume is not None} >= (paused & {
        t for t, (s, steps) in expected.items() if steps > 10})


def test_plan_shows_the_asha_budget_against_the_full_sweep() -> None:
    from orchestrator.plan import render_plan

    text = render_plan(build_job(_spec(), source="<t>"), 2, 0)
    assert ("successive halving (asha, val_loss): rungs at steps 10, 30, 90; about 210 training steps (26% of "
            "the full sweep's 810; trials reaching each rung: 9, 3, 1), at most 530 (65%) if trials arrive at the "
            "rungs from worst to best") in text
    assert "successive halving" not in render_plan(build_job(TINY_SPEC, source="<t>"), 2, 0)


def test_bench_asha_compares_the_same_trials_with_and_without_the_scheduler(tmp_path: Path) -> None:
    from bench.asha import parse_args, sweep_spec

    args = parse_args([])
    full = build_job(sweep_spec("full", str(tmp_path), args, asha=False))
    halving = build_job(sweep_spec("asha", str(tmp_path), args, asha=True))
    assert len(full.trials) == 16 and [t.trial_id for t in full.trials] == [t.trial_id for t in halving.trials]
    assert full.spec.sweep is not None and full.spec.sweep.scheduler is None
    assert halving.spec.sweep is not None and halving.spec.sweep.scheduler is not None


def test_paused_is_not_terminal_and_pruned_is_not_a_failure() -> None:
    from orchestrator.results import FAILURE_STATUSES, SUCCESS_STATUSES, TERMINAL_STATUSES
    from orchestrator.run.runner import SKIP_STATUSES

    assert "paused" not in TERMINAL_STATUSES and "paused" not in SKIP_STATUSES  # a rerun resumes it
    assert "pruned" in SKIP_STATUSES and "pruned" in TERMINAL_STATUSES  # a rerun does not train it again
    assert "pruned" not in FAILURE_STATUSES and "pruned" not in SUCCESS_STATUSES  # clean keeps its checkpoint
