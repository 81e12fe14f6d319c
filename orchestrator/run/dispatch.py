"""Dispatch trials to a pool of reusable trainer actors on Ray, with retries and resume.

The driver holds at most ``slots`` actors, where ``slots`` is what both ``max_concurrent``
and the cluster's resources allow: an idle actor keeps its CPU reservation, so a surplus
actor would make other trials wait forever. Each actor streams its trial's events back;
the best checkpoint travels with them and is stored under the results folder, so a
multi-node cluster needs no shared filesystem and a lost actor's trial resumes from it.

What is retried and what is not:

- a lost worker or node (the actor died): retried up to ``max_retries`` times on a fresh
  actor, from the driver's last checkpoint of that trial;
- out of memory (device OOM, or Ray's memory monitor killing the worker): ``oom``, not retried;
- a non-finite loss: ``diverged`` (the engine's verdict), not retried;
- an exception inside the trainer: ``failed`` with the worker's traceback, not retried.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from orchestrator.run.actor import TrainerActor
from orchestrator.errors import UsageError
from orchestrator.run.faults import Fault, raise_commit_fault
from orchestrator.spec import allowed_concurrency
from orchestrator.run.progress import Progress, format_duration, trial_label
from orchestrator.results import SUCCESS_STATUSES, ResultsStore, trial_row
from orchestrator.spec.sweep import Trial

log = logging.getLogger(__name__)

#: How often the loop wakes up to notice an interrupt when no event arrives.
POLL_S = 0.5


@dataclass
class _Task:
    """A trial on its way through the pool."""

    trial: Trial
    tag: str
    attempt: int = 1
    resume: Optional[bytes] = None
    resume_step: Optional[int] = None
    started_at: Optional[datetime] = None
    started_mono: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    rows: list[Any] = field(default_factory=list)  # throughput rows


@dataclass
class SweepSummary:
    """What happened to the trials of one invocation."""

    total: int
    skipped: int
    statuses: dict[str, int]
    interrupted: bool


class Dispatcher:
    """Runs ``trials`` on the connected Ray cluster and records them in ``store``.

    Args:
        trials: the trials to run (already filtered: finished ones are not passed).
        resources: the spec's ``resources`` section (cpus/gpus per trial, max_concurrent, max_retries).
        store: where rows, evaluations and checkpoints go.
        total: the sweep's size including skipped trials, for the progress count.
        faults: injected faults (chaos drills), see :mod:`orchestrator.run.faults`.
        data_dir: corpus directory passed to the workers.
        stop: set by a signal handler to stop the sweep early.
        wait_for_resources: on a cluster that cannot fit a trial yet, wait for an autoscaler
            instead of failing (an existing cluster; never for embedded local Ray).
    """

    def __init__(
        self,
        trials: list[Trial],
        resources: Any,
        store: ResultsStore,
        *,
        total: Optional[int] = None,
        faults: tuple[Fault, ...] = (),
        data_dir: Optional[str] = None,
        stop: Optional[threading.Event] = None,
        wait_for_resources: bool = False,
    ) -> None:
        self.trials = trials
        self.res = resources
        self.store = store
        self.total = total if total is not None else len(trials)
        self.faults = faults
        self.data_dir = data_dir
        self.stop = stop or threading.Event()
        self.wait_for_resources = wait_for_resources
        self.statuses: collections.Counter[str] = collections.Counter()
        #: What the trials reported at start, for the manifest: corpus name -> sha256, and
        #: one entry per distinct (host, device, device name).
        self.corpora: dict[str, str] = {}
        self.devices: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ main loop
    def run(self) -> SweepSummary:
        import ray

        skipped = self.total - len(self.trials)
        cluster = ray.cluster_resources()
        slots = allowed_concurrency(self.res, cluster.get("CPU", 0), cluster.get("GPU", 0))
        if slots < 1 and self.trials:
            need = f"each trial asks for {self.res.cpus_per_trial} CPU and {self.res.gpus_per_trial} GPU"
            if not self.wait_for_resources:
                raise UsageError(
                    f"resources: this machine cannot fit one trial: {need}, it has {ray.cluster_resources()}; "
                    "lower resources.cpus_per_trial / gpus_per_trial"
                )
            log.warning("the cluster cannot fit a trial yet (%s); waiting for the autoscaler to add nodes", need)
            slots = 1
        slots = min(slots, len(self.trials)) or 1
        progress = Progress(len(self.trials), slots)
        log.info(
            "running %d trials (%d finished earlier, skipped) on %d actors of %s CPU / %s GPU each",
            len(self.trials), skipped, slots, self.res.cpus_per_trial, self.res.gpus_per_trial,
        )
        pending: collections.deque[_Task] = collections.deque(self._task(t) for t in self.trials)
        idle: list[Any] = []
        running: dict[Any, tuple[Any, _Task]] = {}
        actor_cls = ray.remote(TrainerActor).options(
            num_cpus=self.res.cpus_per_trial,
            num_gpus=self.res.gpus_per_trial,
            max_restarts=0,
            max_task_retries=0,
        )
        try:
            while (pending or running) and not self.stop.is_set():
                while pending and len(running) < slots:
                    task = pending.popleft()
                    actor = idle.pop() if idle else actor_cls.remote(max(1, int(self.res.cpus_per_trial)), self.data_dir)
                    running[self._launch(actor, task)] = (actor, task)
                    task.started_mono = time.monotonic()
                    task.started_at = task.started_at or datetime.now(timezone.utc)
                    how = f" from checkpoint at step {task.resume_step}" if task.resume else ""
                    progress.trial_started(task.tag, f"started (attempt {task.attempt}){how}")
                ready, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                for gen in ready:
                    actor, task = running[gen]
                    outcome = self._advance(gen, task, progress)
                    if outcome is None:
                        continue
                    del running[gen]
                    if outcome == "lost":
                        ray.kill(actor)
                        if task.attempt <= self.res.max_retries:
                            task.attempt += 1
                            task.rows = []
                            pending.appendleft(task)
                            how = f"from checkpoint at step {task.resume_step}" if task.resume else "from scratch"
                            progress.trial_requeued(task.tag, f"retrying (attempt {task.attempt}) {how}")
                        else:
                            self._finish(task, progress, "failed", None, task.info.get("lost_reason"))
                    elif outcome == "oom-killed":
                        ray.kill(actor)
                        self._finish(task, progress, "oom", None, task.info.get("lost_reason"))
                    else:
                        idle.append(actor)
                if not pending:
                    # An idle actor keeps its reservation: free it for actors still waiting to start.
                    while idle:
                        ray.kill(idle.pop())
        finally:
            for actor in idle + [a for a, _ in running.values()]:
                ray.kill(actor)
        interrupted = self.stop.is_set() and bool(pending or running)
        if interrupted:
            log.warning(
                "interrupted: %d trials stopped or not started; run the same command again to resume them",
                len(pending) + len(running),
            )
        return SweepSummary(self.total, skipped, dict(self.statuses), interrupted)

    # ------------------------------------------------------------------ pieces
    def _task(self, trial: Trial) -> _Task:
        tag = f"{trial.index + 1}/{self.total} {trial.trial_id}"
        label = trial_label(trial.overrides)
        task = _Task(trial=trial, tag=f"{tag} {label}".strip())
        saved = self.store.read_checkpoint_bytes(trial.trial_id)
        if saved is not None:
            step = _checkpoint_step(saved)
            if step is None:
                log.warning("[%s] its saved checkpoint is unreadable; starting it over", task.tag)
            else:
                task.resume, task.resume_step = saved, step
        return task

    def _launch(self, actor: Any, task: _Task) -> Any:
        fault = next((f for f in self.faults if f.applies(task.trial.trial_id, task.attempt)), None)
        t = task.trial
        if "throughput" in t.config:
            return actor.throughput.remote(t.trial_id, t.config, task.attempt, fault)
        # Backpressure 1: the worker goes on only once the driver has taken its last event, so
        # a checkpoint it yielded has reached the driver before the worker can die after it.
        run = actor.run.options(_generator_backpressure_num_objects=1)
        return run.remote(t.trial_id, t.config, task.attempt, task.resume, fault)

    def _advance(self, gen: Any, task: _Task, progress: Progress) -> Optional[str]:
        """Handle the next event of ``gen``; a non-None return means the trial left its actor."""
        import ray
        from ray.exceptions import ActorDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

        try:
            event = ray.get(next(gen))
        except StopIteration:
            self._finish(task, progress, "failed", None, "the trainer stopped without a result")
            return "done"
        except OutOfMemoryError as e:  # Ray's memory monitor killed the worker
            task.info["lost_reason"] = f"OutOfMemoryError: the worker was killed by Ray's memory monitor: {e}"
            return "oom-killed"
        except (ActorDiedError, RayActorError, WorkerCrashedError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            task.info["lost_reason"] = f"{type(e).__name__}: worker lost {task.attempt} time(s): {reason}"
            progress.line(task.tag, f"lost its worker ({type(e).__name__})")
            return "lost"
        kind = event["kind"]
        if kind == "start":
            info = event["info"]
            task.info.update(info)
            if "corpus" in info:
                self.corpora[info["corpus"]] = info["corpus_sha256"]
            if "device" in info:
                device = {k: info.get(k) for k in ("host", "device", "device_name", "precision")}
                if device not in self.devices:
                    self.devices.append(device)
                progress.line(task.tag, f"running on {info['host']} ({info['device']}, {info['precision']}, "
                              f"{info['params']:,} params)")
            else:
                progress.line(task.tag, f"running on {info['host']}")
        elif kind == "eval":
            r = event["record"]
            progress.line(
                task.tag,
                f"step {r.step}: train {r.train_loss:.4f}, val {r.val_loss:.4f} ({r.val_bpc:.3f} bpc, "
                f"acc {r.val_accuracy:.3f}), {r.samples_per_s:,.0f} samples/s",
            )
        elif kind == "row":
            row = event["row"]
            task.rows.append(row)
            task.info.update(device=row.device, precision=row.precision)
            speed = f"{row.samples_per_s:,.0f} samples/s, {row.step_time_ms:.1f} ms/step" if row.status == "ok" else (
                (row.error or "").splitlines()[0] if row.error else "")
            progress.line(task.tag, f"batch {row.batch_size}: {row.status} {speed}".rstrip())
        elif kind == "checkpoint":
            task.resume, task.resume_step = event["data"], event["step"]
            self.store.write_checkpoint_bytes(task.trial.trial_id, event["data"])
        elif kind == "end":
            result = event["result"]
            if result is None:  # a throughput trial: its rows are the result
                self._finish_throughput(task, progress)
            else:
                self._finish(task, progress, result.status.value, result, result.error)
            return "done"
        elif kind == "error":
            self._finish(task, progress, "oom" if event["oom"] else "failed", None, event["error"])
            return "done"
        return None

    def _finish_throughput(self, task: _Task, progress: Progress) -> None:
        from rnn.throughput import mark_best

        task.rows = mark_best(task.rows)
        errors = [r for r in task.rows if r.status == "error"]
        status = "failed" if errors and len(errors) == len(task.rows) else "completed"
        error = errors[0].error if errors else None
        self._finish(task, progress, status, None, error, summary=_best_line(task.rows), throughput=task.rows)

    def _finish(
        self, task: _Task, progress: Progress, status: str, result: Any, error: Optional[str],
        summary: Optional[str] = None, throughput: tuple[Any, ...] | list[Any] = (),
    ) -> None:
        finished = datetime.now(timezone.utc)
        has_ckpt = task.resume is not None and result is not None and result.best_checkpoint
        row = trial_row(
            task.trial,
            status=status,
            result=result,
            error=error,
            attempts=task.attempt,
            started_at=task.started_at,
            finished_at=finished,
            info=task.info,
            checkpoint=self.store.checkpoint_relpath(task.trial.trial_id) if has_ckpt else None,
        )
        # One commit per trial, row + evals + throughput, or nothing (the rerun trains it again).
        raise_commit_fault(self.faults, task.trial.trial_id, task.attempt, self.store.job_dir)
        self.store.commit_trial(row, evals=result.evals if result is not None else (), throughput=throughput)
        self.statuses[status] += 1
        duration = time.monotonic() - task.started_mono
        if summary is not None:
            msg = f"{status}: {summary} in {format_duration(duration)}"
        elif result is not None and result.best_val_loss is not None:
            msg = (f"{status}: best val {result.best_val_loss:.4f} ({result.best_val_bpc:.3f} bpc) at step "
                   f"{result.best_step}, {result.steps} steps in {format_duration(duration)}")
        else:
            msg = f"{status}: {error.splitlines()[0] if error else 'no evaluation'}"
        progress.trial_finished(task.tag, msg, duration, ok=status in SUCCESS_STATUSES)


def _best_line(rows: list[Any]) -> str:
    best = next((r for r in rows if r.is_best), None)
    ooms = [r.batch_size for r in rows if r.status == "oom"]
    text = f"best batch {best.batch_size}: {best.samples_per_s:,.0f} samples/s" if best else "no batch size ran"
    return text + (f"; out of memory at {ooms}" if ooms else "")


def _checkpoint_step(data: bytes) -> Optional[int]:
    from rnn.checkpoint import load_checkpoint
    from rnn.errors import CheckpointError

    try:
        return int(load_checkpoint(data)["step"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None
