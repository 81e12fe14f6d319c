"""The dispatch loop's policy without Ray: a scripted backend drives the real Dispatcher.

The backend below is the test's stand-in for :class:`orchestrator.run.ray_backend.RayBackend`
(the seam is :class:`orchestrator.run.backend.Backend`); the real-Ray behaviour is covered by
test_faults.py, test_cluster.py and test_stall.py. Each scripted trial is a list of steps:
an event to deliver, ``"lost"`` / ``"oom-killed"`` (the worker dies), ``"hang"`` (nothing
more is ever heard), or ``"pause S"`` (nothing is heard for S seconds).
"""

from __future__ import annotations

import copy
import io
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional
from unittest.mock import patch

import pytest
import torch

from conftest import TINY_SPEC, eval_record
from orchestrator.results import ResultsStore
from orchestrator.results.store import BEST_CHECKPOINT
from orchestrator.run.attempt import Attempt
from orchestrator.run.backend import Assignment, Notice, NoticeKind
from orchestrator.run.dispatch import Dispatcher, beat_interval
from orchestrator.run.events import Beat, Checkpointed, Ended, Evaluated, Started
from orchestrator.spec import ResourcesSpec, build_job
from rnn.checkpoint import FORMAT_VERSION
from rnn.events import TrainResult, TrialStatus


def _ckpt(step: int) -> bytes:
    buf = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "step": step}, buf)
    return buf.getvalue()


def _eval(step: int, loss: float) -> Evaluated:
    return Evaluated(eval_record(step, loss))


def _end(steps: int, loss: float) -> Ended:
    last = eval_record(steps, loss)
    return Ended(TrainResult(status=TrialStatus.COMPLETED, steps=steps, params=10, device="cpu", precision="fp32",
                             train_time_s=1.0, best_val_loss=loss, best_val_bpc=last.val_bpc,
                             best_val_accuracy=last.val_accuracy, best_step=steps, best_checkpoint="x/best.pt",
                             evals=(last,)))


START = Started({"host": "h", "pid": 1})


class ScriptedBackend:
    """Runs scripted attempts: ``scripts[trial_id]`` is a list (one per attempt) of step lists."""

    def __init__(self, scripts: dict[str, list[list[Any]]], capacity: Optional[int] = None,
                 start_failures: Optional[list[Notice]] = None, unhostable: Optional[str] = None) -> None:
        self.scripts = scripts
        self.cap = capacity
        self.start_failures = list(start_failures or [])
        self.unhostable_reason = unhostable
        self.next_id = 0
        self.starting: list[int] = []
        self.alive: set[int] = set()
        self.running: dict[int, list[Any]] = {}
        self.launched: list[Assignment] = []
        self.killed: list[int] = []
        self.most_workers = 0
        self.closed = False

    def open(self, resources: ResourcesSpec) -> None:
        pass

    def shutdown(self) -> None:
        self.close()

    def capacity(self) -> Optional[int]:
        return self.cap

    def start_worker(self) -> int:
        worker, self.next_id = self.next_id, self.next_id + 1
        self.starting.append(worker)
        self.alive.add(worker)
        self.most_workers = max(self.most_workers, len(self.alive))
        return worker

    def launch(self, worker: int, a: Assignment) -> None:
        self.launched.append(a)
        self.running[worker] = list(self.scripts[a.trial_id][a.attempt - 1])

    def poll(self, timeout_s: float) -> list[Notice]:
        notices: list[Notice] = []
        for worker in self.starting:
            if self.start_failures:
                notices.append(self._failure(worker))
            else:
                notices.append(Notice(NoticeKind.READY, worker, reason="host"))
        self.starting = []
        for worker, steps in list(self.running.items()):
            if not steps:
                del self.running[worker]
                notices.append(Notice(NoticeKind.END, worker))
                continue
            step = steps[0]
            if step == "hang":
                continue
            if isinstance(step, str) and step.startswith("pause "):
                steps[0] = ("until", time.monotonic() + float(step.split()[1]))
                continue
            if isinstance(step, tuple):
                if time.monotonic() < step[1]:
                    continue
                steps.pop(0)
                continue
            steps.pop(0)
            if step == "lost":
                del self.running[worker]
                notices.append(Notice(NoticeKind.LOST, worker, reason="ActorDiedError: the actor died"))
            elif step == "oom-killed":
                del self.running[worker]
                notices.append(Notice(NoticeKind.LOST, worker, oom=True, reason="OutOfMemoryError: killed"))
            else:
                notices.append(Notice(NoticeKind.EVENT, worker, event=step))
        if not notices:
            time.sleep(min(timeout_s, 0.01))
        return notices

    def _failure(self, worker: int) -> Notice:
        template = self.start_failures.pop(0)
        return Notice(NoticeKind.START_FAILED, worker, reason=template.reason, setup_failed=template.setup_failed)

    def kill(self, worker: int) -> None:
        self.killed.append(worker)
        self.alive.discard(worker)
        self.running.pop(worker, None)
        if worker in self.starting:
            self.starting.remove(worker)

    def unhostable(self) -> Optional[str]:
        return self.unhostable_reason

    def check(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
        for worker in list(self.alive):
            self.kill(worker)


def _trials(n_seeds: int = 2, **resources: Any) -> tuple[list, ResourcesSpec]:
    raw = copy.deepcopy(TINY_SPEC)
    raw["sweep"] = {"grid": {"model.cell": ["lstm"]}, "seeds": list(range(n_seeds))}
    raw["resources"].update(resources)
    job = build_job(raw, source="<test>")
    return list(job.trials), job.spec.resources


def _happy(loss: float = 2.0) -> list[Any]:
    return [START, _eval(10, loss + 0.5), Checkpointed(10, _ckpt(10)), _eval(20, loss), _end(20, loss)]


def _run(tmp_path: Path, trials: list, res: ResourcesSpec, backend: ScriptedBackend) -> tuple[Dispatcher, dict]:
    store = ResultsStore(tmp_path / "job")
    dispatcher = Dispatcher(trials, res, store, backend)
    dispatcher.run()
    rows = {r["trial_id"]: r for r in store.read_trials().to_pylist()}
    return dispatcher, rows


def test_lost_worker_is_retried_from_its_last_checkpoint(tmp_path: Path) -> None:
    trials, res = _trials(2, max_retries=1)
    a, b = trials[0].trial_id, trials[1].trial_id
    lost_after_ckpt = [START, _eval(10, 3.0), Checkpointed(10, _ckpt(10)), "lost"]
    backend = ScriptedBackend({a: [lost_after_ckpt, _happy()], b: [_happy()]})
    dispatcher, rows = _run(tmp_path, trials, res, backend)
    assert rows[a]["status"] == "completed" and rows[a]["attempts"] == 2
    retry = [x for x in backend.launched if x.trial_id == a and x.attempt == 2][0]
    assert retry.resume == _ckpt(10)  # the driver's copy travelled to the new worker
    assert rows[b]["status"] == "completed" and rows[b]["attempts"] == 1
    assert backend.closed and not backend.alive


def test_a_trial_lost_more_than_max_retries_fails_with_what_it_reached(tmp_path: Path) -> None:
    trials, res = _trials(1, max_retries=1)
    a = trials[0].trial_id
    dying = [START, _eval(10, 3.0), Checkpointed(10, _ckpt(10)), "lost"]
    _, rows = _run(tmp_path, trials, res, ScriptedBackend({a: [dying, dying]}))
    row = rows[a]
    assert row["status"] == "failed" and row["attempts"] == 2
    assert "worker lost: ActorDiedError" in row["error"] and "gave up after 2 attempts" in row["error"]
    assert row["best_val_loss"] == 3.0 and row["best_step"] == 10  # from the events it sent
    assert row["checkpoint"] == f"checkpoints/{a}/best.pt"


def test_oom_kill_is_recorded_not_retried(tmp_path: Path) -> None:
    trials, res = _trials(1, max_retries=2)
    a = trials[0].trial_id
    backend = ScriptedBackend({a: [[START, "oom-killed"]]})
    _, rows = _run(tmp_path, trials, res, backend)
    assert rows[a]["status"] == "oom" and rows[a]["attempts"] == 1
    assert len(backend.launched) == 1


def test_a_silent_trial_is_killed_and_retried_as_stalled(tmp_path: Path) -> None:
    trials, res = _trials(1, max_retries=1, stall_timeout_s=0.3)
    a = trials[0].trial_id
    backend = ScriptedBackend({a: [[START, _eval(10, 3.0), "hang"], _happy()]})  # silent after its first events
    dispatcher, rows = _run(tmp_path, trials, res, backend)
    assert rows[a]["status"] == "completed" and rows[a]["attempts"] == 2
    assert backend.killed[0] == 0  # the stalled worker was killed, not left holding its CPU


def test_default_stall_timeout_follows_the_trials_pace(tmp_path: Path) -> None:
    trials, res = _trials(1)
    dispatcher = Dispatcher(trials, res, ResultsStore(tmp_path / "job"), ScriptedBackend({}))
    state = Attempt.of(trials[0], 1)
    assert dispatcher.stall_timeout_s(state) == 600.0
    state.heard(100.0)
    state.heard(400.0)  # a 300 s gap between evaluations
    assert dispatcher.stall_timeout_s(state) == 1500.0


def test_a_training_trial_is_judged_by_its_heartbeats_and_an_evaluation_by_its_pace(tmp_path: Path) -> None:
    trials, res = _trials(1)
    dispatcher = Dispatcher(trials, res, ResultsStore(tmp_path / "job"), ScriptedBackend({}))
    attempt = Attempt.of(trials[0], 1)
    attempt.heard(100.0)
    attempt.heard(400.0)  # the first evaluation came 300 s in
    training = Beat(410, "training", steps_per_s=20.0, samples_per_s=640.0, train_loss=2.5)
    attempt.heard(415.0, beat_interval(training))
    assert dispatcher.stall_timeout_s(attempt) == 60.0  # 4 heartbeats missed: hung, caught in a minute
    attempt.heard(430.0, beat_interval(Beat(420, "evaluating")))
    assert dispatcher.stall_timeout_s(attempt) == 1500.0  # an evaluation sends nothing until it ends
    # a step slower than the heartbeat period: the next heartbeat is due a step later
    assert beat_interval(Beat(1, "training", steps_per_s=0.01)) == pytest.approx(100.0)
    assert beat_interval(Evaluated(eval_record(10, 2.0))) is None


def test_heartbeats_make_a_progress_line_with_the_pace_and_no_silence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trials, res = _trials(1)
    a = trials[0].trial_id
    beat = Beat(5, "training", steps_per_s=2.5, samples_per_s=80.0, train_loss=3.1234)
    backend = ScriptedBackend({a: [[START, beat, Beat(6, "training", 2.5, 80.0, 3.0), *_happy()[1:]]]})
    caplog.set_level("INFO")
    _, rows = _run(tmp_path, trials, res, backend)
    assert rows[a]["status"] == "completed"
    lines = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert len(lines) == 1  # one line a minute at most, per trial
    assert "step 5/20: train 3.1234, 2.5 steps/s, ETA 6s" in lines[0]


def test_a_trial_preparing_data_or_compiling_has_a_floor_of_its_own_and_is_not_called_silent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trials, res = _trials(1)
    dispatcher = Dispatcher(trials, res, ResultsStore(tmp_path / "job"), ScriptedBackend({}))
    attempt = Attempt.of(trials[0], 1)
    attempt.heard(1.0, None, "compiling")
    assert dispatcher.stall_timeout_s(attempt) == 1800.0  # a long GPU compile is not a hang
    attempt.heard(2.0, beat_interval(Beat(0, "training", steps_per_s=5.0)))
    assert attempt.slow_phase is None and dispatcher.stall_timeout_s(attempt) == 60.0
    a = trials[0].trial_id
    backend = ScriptedBackend({a: [[Beat(0, "preparing data"), "pause 1.2", START, *_happy()[1:]]]})
    caplog.set_level("INFO")
    with patch("orchestrator.run.dispatch.SILENT_NOTE_S", 0.5):
        _run(tmp_path / "run", trials, res, backend)
    notes = [r.getMessage() for r in caplog.records if "stall timeout" in r.getMessage()]
    assert notes and all("preparing data for" in n for n in notes) and not any("silent" in n for n in notes)


def test_a_time_budgeted_trials_heartbeat_line_shows_its_training_time_and_eta(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trials, res = _trials(1)
    a = trials[0].trial_id
    timed = replace(trials[0], run_config=replace(trials[0].run_config, train=replace(
        trials[0].run_config.train, max_steps=None, max_time_s=600.0, schedule_by="time", scheduler="cosine")))
    beat = Beat(500, "training", steps_per_s=2.0, samples_per_s=64.0, train_loss=2.0, trained_s=240.0)
    backend = ScriptedBackend({a: [[START, beat, *_happy()[1:]]]})
    caplog.set_level("INFO")
    _run(tmp_path, [timed], res, backend)
    (line,) = [r.getMessage() for r in caplog.records if "steps/s" in r.getMessage()]
    assert "step 500: train 2.0000, 2.0 steps/s, 4m00s of 10m00s trained, ETA 6m00s of training" in line


def test_explicit_stall_timeout_spares_the_set_up_before_the_first_event(tmp_path: Path) -> None:
    trials, res = _trials(1, stall_timeout_s=30)
    dispatcher = Dispatcher(trials, res, ResultsStore(tmp_path / "job"), ScriptedBackend({}))
    state = Attempt.of(trials[0], 1)
    assert dispatcher.stall_timeout_s(state) == 600.0  # loading data, building the model
    state.heard(1.0)
    assert dispatcher.stall_timeout_s(state) == 30.0


def test_trial_timeout_ends_as_timeout_and_is_not_retried(tmp_path: Path) -> None:
    trials, res = _trials(1, max_retries=2, trial_timeout_s=0.3)
    a = trials[0].trial_id
    backend = ScriptedBackend({a: [[START, _eval(10, 2.5), Checkpointed(10, _ckpt(10)), "hang"]]})
    _, rows = _run(tmp_path, trials, res, backend)
    assert rows[a]["status"] == "timeout" and rows[a]["attempts"] == 1
    assert "trial_timeout_s" in rows[a]["error"] and rows[a]["best_val_loss"] == 2.5
    assert len(backend.launched) == 1


def test_pool_never_exceeds_capacity_or_max_concurrent_and_frees_idle_workers(tmp_path: Path) -> None:
    trials, res = _trials(6, max_concurrent=4)
    scripts = {t.trial_id: [_happy()] for t in trials}
    backend = ScriptedBackend(scripts, capacity=2)
    _, rows = _run(tmp_path, trials, res, backend)
    assert backend.most_workers == 2 and len(rows) == 6
    elastic = ScriptedBackend(scripts)  # a cluster that may grow: up to max_concurrent
    _run(tmp_path / "elastic", trials, res, elastic)
    assert elastic.most_workers == 4


def test_no_capacity_on_a_fixed_machine_is_a_usage_error(tmp_path: Path) -> None:
    from orchestrator.errors import UsageError

    trials, res = _trials(1)
    with pytest.raises(UsageError, match="cannot fit one trial"):
        Dispatcher(trials, res, ResultsStore(tmp_path / "job"), ScriptedBackend({}, capacity=0)).run()


def test_runtime_env_failure_fails_the_trial_with_its_cause(tmp_path: Path) -> None:
    trials, res = _trials(2)
    a, b = trials[0].trial_id, trials[1].trial_id
    failure = Notice(NoticeKind.START_FAILED, -1, reason="RuntimeEnvSetupError: pip install failed", setup_failed=True)
    backend = ScriptedBackend({a: [_happy()], b: [_happy()]}, start_failures=[failure])
    _, rows = _run(tmp_path, trials, res, backend)
    assert rows[a]["status"] == "failed" and "RuntimeEnvSetupError: pip install failed" in rows[a]["error"]
    assert rows[b]["status"] == "completed"  # the next worker started and ran the other trial


def test_unhostable_trials_fail_with_the_reason(tmp_path: Path) -> None:
    trials, res = _trials(2)

    class NeverReady(ScriptedBackend):
        def poll(self, timeout_s: float) -> list[Notice]:
            time.sleep(0.01)
            return []

    backend = NeverReady({}, unhostable="no node of the cluster can host a trial: needs 1 CPU")
    _, rows = _run(tmp_path, trials, res, backend)
    assert {r["status"] for r in rows.values()} == {"failed"}
    assert all("no node of the cluster can host" in r["error"] for r in rows.values())
    assert backend.closed and not backend.alive  # the waiting workers' demand is withdrawn


def test_stream_ending_without_a_result_is_a_failure(tmp_path: Path) -> None:
    trials, res = _trials(1)
    a = trials[0].trial_id
    _, rows = _run(tmp_path, trials, res, ScriptedBackend({a: [[START]]}))
    assert rows[a]["status"] == "failed" and "without a result" in rows[a]["error"]


def test_resume_checkpoint_is_read_when_dispatched_not_up_front(tmp_path: Path) -> None:
    trials, res = _trials(3, max_concurrent=1)
    store = ResultsStore(tmp_path / "job")
    for t in trials:
        store.write_checkpoint_bytes(t.trial_id, _ckpt(7))
    reads: list[str] = []
    original = store.read_checkpoint_bytes

    def counting(trial_id: str, name: str = BEST_CHECKPOINT) -> Optional[bytes]:
        reads.append(trial_id)
        return original(trial_id, name)

    store.read_checkpoint_bytes = counting  # type: ignore[method-assign]
    backend = ScriptedBackend({t.trial_id: [_happy()] for t in trials})
    dispatcher = Dispatcher(trials, res, store, backend)
    seen_at_launch: list[int] = []
    launch = backend.launch

    def recording(worker: int, a: Assignment) -> None:
        seen_at_launch.append(len(reads))
        launch(worker, a)

    backend.launch = recording  # type: ignore[method-assign]
    dispatcher.run()
    assert seen_at_launch == [1, 2, 3]  # one read per dispatch, none before
    assert all(a.resume == _ckpt(7) for a in backend.launched)
