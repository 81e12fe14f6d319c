"""From a trial's events to its records in the job folder, and its progress lines.

:class:`Ledger` is what the recorder has built of one trial's result (its evaluations, the
throughput rows of this attempt, the last checkpoint as bytes for a retry, its paused result
under successive halving). :class:`Recorder` owns the ledgers: it turns events into them and,
when the trial ends, into one durable commit of its row, evaluations and throughput rows.
The attempt itself (its number, timing, liveness) is the dispatcher's
(:class:`~orchestrator.run.attempt.Attempt`), which the recorder only reads.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

from orchestrator.durations import format_duration
from orchestrator.results import ResultsStore, trial_row
from orchestrator.results.store import RESUME_CHECKPOINT
from orchestrator.run.attempt import Attempt
from orchestrator.run.board import Board
from orchestrator.run.events import Beat, Checkpointed, Ended, Evaluated, Event, Measured, Paused, Raised, Started
from orchestrator.run.faults import Fault, raise_commit_fault
from orchestrator.run.progress import Progress
from rnn.events import EvalRecord, TrainResult, TrialStatus

if TYPE_CHECKING:
    from orchestrator.track import Tracker

log = logging.getLogger(__name__)

#: A trial's heartbeats make a progress line at most this often.
BEAT_LINE_S = 60.0


@dataclass
class Ledger:
    """One trial's result as the recorder builds it. The checkpoint bytes are held only while it runs."""

    info: dict[str, Any] = field(default_factory=dict)
    evals: dict[int, EvalRecord] = field(default_factory=dict)  # by step, across attempts
    rows: list[Any] = field(default_factory=list)  # throughput rows of this attempt
    resume: Optional[bytes] = None
    resume_step: Optional[int] = None
    resume_loaded: bool = False
    # Successive halving: its result when it last paused (its resume checkpoint is then
    # checkpoints/<id>/last.pt, and ``resume`` holds those bytes).
    paused_result: Optional[TrainResult] = None
    has_resume_point: bool = False
    beat_logged_mono: float = 0.0  # when a heartbeat last made a progress line


class Recorder:
    """Builds each trial's :class:`Ledger` from its events and commits finished trials to ``store``.

    Also collects what the manifest records: corpus name -> sha256, and one entry per distinct
    (host, device, device name, precision).
    """

    def __init__(
        self,
        store: ResultsStore,
        progress: Progress,
        faults: tuple[Fault, ...] = (),
        on_finished: Optional[Callable[[str, TrialStatus, dict[str, Any], list[EvalRecord]], None]] = None,
        tracker: Optional[Tracker] = None,
    ) -> None:
        self.store = store
        self.tracker = tracker  # told each event and each commit (TensorBoard, MLflow)
        self.board = Board()  # what the running trials are doing now (the live report reads it)
        self.faults = faults
        self.progress = progress
        self.on_finished = on_finished  # told each trial that ended: id, status, its row and evaluations
        self.statuses: dict[str, int] = {}
        self.corpora: dict[str, str] = {}
        self.devices: list[dict[str, Any]] = []
        self._ledgers: dict[str, Ledger] = {}

    def ledger(self, trial_id: str) -> Ledger:
        """The trial's ledger (a new one for a trial not seen yet); read-only outside the recorder."""
        found = self._ledgers.get(trial_id)
        if found is None:
            found = self._ledgers[trial_id] = Ledger()
        return found

    def restore_paused(self, trial_id: str, result: TrainResult) -> None:
        """A trial an earlier run left paused at a rung: its committed result and resume point."""
        ledger = self.ledger(trial_id)
        ledger.paused_result, ledger.has_resume_point = result, True

    def launching(self, attempt: Attempt) -> Ledger:
        """The trial is about to be handed to a worker: its resume point is read from the job
        folder the first time (never up front), and a new attempt's throughput rows start empty."""
        trial_id = attempt.trial_id
        ledger = self.ledger(trial_id)
        ledger.rows = []
        if not ledger.resume_loaded:
            ledger.resume_loaded = True
            # a paused trial resumes from its rung (last.pt); anything else from its best checkpoint
            saved = (self.store.read_checkpoint_bytes(trial_id, RESUME_CHECKPOINT) if ledger.has_resume_point
                     else self.store.read_checkpoint_bytes(trial_id))
            point = _checkpoint_point(saved) if saved is not None else None
            if saved is not None and point is None:
                log.warning("[%s] its saved checkpoint is unreadable; starting it over", attempt.tag)
            elif saved is not None and point is not None:
                ledger.resume, (ledger.resume_step, before) = saved, point
                for record in before:  # what an earlier run saw of it: its row holds them all
                    ledger.evals.setdefault(record.step, record)
                if self.tracker is not None:
                    self.tracker.resumed(attempt.trial, before)
        return ledger

    def on_event(self, attempt: Attempt, event: Event) -> bool:
        """Apply one event; True when it was the trial's last (it has been committed)."""
        ledger = self.ledger(attempt.trial_id)
        if self.tracker is not None:
            self.tracker.on_event(attempt.trial, event)
        if isinstance(event, Started):
            self._started(attempt, ledger, event.info)
        elif isinstance(event, Evaluated):
            r = event.record
            ledger.evals[r.step] = r
            self.board.update(attempt.trial_id, attempt.tag, step=r.step, phase="training", train_loss=r.train_loss,
                              val_loss=r.val_loss)
            self.progress.line(
                attempt.tag,
                f"step {r.step}: train {r.train_loss:.4f}, val {r.val_loss:.4f} ({r.val_bpc:.3f} bpc, "
                f"acc {r.val_accuracy:.3f}), {r.samples_per_s:,.0f} samples/s",
            )
        elif isinstance(event, Measured):
            row = event.row
            ledger.rows.append(row)
            ledger.info.update(device=row.device, precision=row.precision, recurrence=row.recurrence, tf32=row.tf32)
            if row.status == "ok":
                speed = f"{row.samples_per_s:,.0f} samples/s, {row.step_time_ms:.1f} ms/step"
            else:
                speed = (row.error or "").splitlines()[0] if row.error else ""
            status = getattr(row.status, "value", row.status)  # a ThroughputStatus
            self.progress.line(attempt.tag, f"batch {row.batch_size}: {status} {speed}".rstrip())
        elif isinstance(event, Beat):
            self._beat(attempt, ledger, event)
        elif isinstance(event, Checkpointed):
            ledger.resume, ledger.resume_step = event.data, event.step
            self.store.write_checkpoint_bytes(attempt.trial_id, event.data)
        elif isinstance(event, Ended):
            if event.result is None:
                self._finish_throughput(attempt)
            elif event.result.status is TrialStatus.PAUSED:  # a pause must carry its resume checkpoint
                self.finish(attempt, TrialStatus.FAILED, error="the trainer paused without a resume checkpoint")
            else:
                self.finish(attempt, event.result.status, result=event.result, error=event.result.error)
            return True
        elif isinstance(event, Paused):
            self._pause(attempt, ledger, event)
            return True
        elif isinstance(event, Raised):
            self.finish(attempt, TrialStatus.OOM if event.oom else TrialStatus.FAILED, error=event.error)
            return True
        return False

    def prune(self, attempt: Attempt, why: str) -> None:
        """End a paused trial as ``pruned``: its paused row and evaluations, committed again."""
        result = self.ledger(attempt.trial_id).paused_result
        assert result is not None, "only a paused trial can be pruned"
        self.finish(attempt, TrialStatus.PRUNED, result=replace(result, status=TrialStatus.PRUNED),
                    summary=why, running=False)

    def finish(
        self,
        attempt: Attempt,
        status: TrialStatus,
        *,
        result: Optional[TrainResult] = None,
        error: Optional[str] = None,
        summary: Optional[str] = None,
        throughput: Optional[list[Any]] = None,
        running: bool = True,
    ) -> None:
        """Commit the trial's row, evaluations and throughput rows (one durable write), then log it.

        Without an engine result (a lost worker given up on, a timeout, an OOM kill) the row is
        filled from what the events said: the best evaluation seen and the last checkpoint.
        ``running``: False for a trial that was not running (a paused trial pruned).
        """
        tid = attempt.trial_id
        ledger = self.ledger(tid)
        evals = list(result.evals) if result is not None else _evals_seen(ledger)
        row = self._row(attempt, ledger, status, result, error)
        self._commit(attempt, row, evals, throughput or [])
        if ledger.has_resume_point:  # a successive-halving trial has ended: its resume point is not needed
            self.store.delete_checkpoint(tid, RESUME_CHECKPOINT)
        del self._ledgers[tid]  # the bytes are on disk; hold nothing for a finished trial
        self.board.remove(tid)
        self.statuses[status.value] = self.statuses.get(status.value, 0) + 1
        duration = attempt.running_s()
        if summary is not None:
            msg = f"{status.value}: {summary} in {format_duration(duration)}"
        elif result is not None and result.best_val_loss is not None:
            msg = (f"{status.value}: best val {result.best_val_loss:.4f} ({result.best_val_bpc:.3f} bpc) at step "
                   f"{result.best_step}, {result.steps} steps in {format_duration(duration)}")
        else:
            msg = f"{status.value}: {error.splitlines()[0] if error else 'no evaluation'}"
        self.progress.trial_finished(attempt.tag, msg, duration,
                                     ok=status.is_success() or status is TrialStatus.PRUNED, running=running)
        if self.on_finished is not None:
            self.on_finished(tid, status, row, evals)

    # --- pieces ---------------------------------------------------------------------------

    def _pause(self, attempt: Attempt, ledger: Ledger, event: Paused) -> None:
        """Make a pause at a rung durable: the resume checkpoint first, then a ``paused`` part
        (its row and evaluations so far), which a later ``pruned`` or final part supersedes."""
        tid = attempt.trial_id
        self.store.write_checkpoint_bytes(tid, event.data, RESUME_CHECKPOINT)
        ledger.resume, ledger.resume_step, ledger.resume_loaded = event.data, event.step, True
        ledger.has_resume_point = True
        ledger.paused_result = event.result
        self._commit(attempt, self._row(attempt, ledger, TrialStatus.PAUSED, event.result, None),
                     list(event.result.evals), [])
        best = event.result.best_val_loss
        how = f"best val {best:.4f} at step {event.result.best_step}" if best is not None else "no evaluation"
        self.board.remove(tid)
        self.progress.trial_paused(attempt.tag, f"paused at step {event.step} ({how})")

    def _beat(self, attempt: Attempt, ledger: Ledger, beat: Beat) -> None:
        """A training heartbeat: a progress line with the step, the train loss and the pace, at
        most every :data:`BEAT_LINE_S` per trial (an evaluation says the rest)."""
        total = attempt.trial.run_config.train.max_steps
        eta = (total - beat.step) / beat.steps_per_s if total and beat.steps_per_s and total > beat.step else None
        fields = {"train_loss": beat.train_loss, "steps_per_s": beat.steps_per_s, "eta_s": eta}
        self.board.update(attempt.trial_id, attempt.tag, step=beat.step, phase=beat.phase, total=total,
                          **{k: v for k, v in fields.items() if v is not None})
        now = time.monotonic()
        if beat.phase != "training" or now - ledger.beat_logged_mono < BEAT_LINE_S:
            return
        ledger.beat_logged_mono = now
        text = f"step {beat.step}" + (f"/{total}" if total else "")
        if beat.train_loss is not None:
            text += f": train {beat.train_loss:.4f}"
        if beat.steps_per_s:
            text += f", {beat.steps_per_s:,.1f} steps/s"
            if eta is not None:
                text += f", ETA {format_duration(eta)}"
        budget = attempt.trial.run_config.train.max_time_s
        if beat.trained_s is not None and budget:  # schedule_by: time: the budget is training time
            text += (f", {format_duration(beat.trained_s)} of {format_duration(budget)} trained, "
                     f"ETA {format_duration(max(0.0, budget - beat.trained_s))} of training")
        self.progress.line(attempt.tag, text)

    def _row(self, attempt: Attempt, ledger: Ledger, status: TrialStatus, result: Optional[TrainResult],
             error: Optional[str]) -> dict[str, Any]:
        tid = attempt.trial_id
        info = dict(ledger.info)
        evals = _evals_seen(ledger) if result is None else []
        if evals:
            best = min(evals, key=lambda r: r.val_loss if math.isfinite(r.val_loss) else math.inf)
            info.update(best_val_loss=best.val_loss, best_val_bpc=best.val_bpc,
                        best_val_accuracy=best.val_accuracy, best_step=best.step, steps=evals[-1].step)
        if status is TrialStatus.PRUNED and result is not None:  # its best checkpoint is on disk, if it had one
            has_ckpt = result.best_checkpoint is not None
        else:
            has_ckpt = ledger.resume is not None and (result is None or result.best_checkpoint is not None)
        return trial_row(
            attempt.trial,
            status=status,
            result=result,
            error=error,
            attempts=attempt.number,
            started_at=attempt.started_at,
            finished_at=datetime.now(timezone.utc),
            info=info,
            checkpoint=self.store.checkpoint_relpath(tid) if has_ckpt else None,
        )

    def _started(self, attempt: Attempt, ledger: Ledger, info: dict[str, Any]) -> None:
        ledger.info.update(info)
        if attempt.trial.kind == "train":
            self.board.update(attempt.trial_id, attempt.tag, phase="started",
                              total=attempt.trial.run_config.train.max_steps)
        if "corpus" in info:
            self.corpora[info["corpus"]] = info["corpus_sha256"]
        if "device" in info:
            device = {k: info.get(k) for k in ("host", "device", "device_name", "precision")}
            if device not in self.devices:
                self.devices.append(device)
            self.progress.line(attempt.tag, f"running on {info['host']} (pid {info.get('pid')}, {info['device']}, "
                               f"{info['precision']}, {info['params']:,} params)")
        else:
            self.progress.line(attempt.tag, f"running on {info.get('host')} (pid {info.get('pid')})")

    def _finish_throughput(self, attempt: Attempt) -> None:
        from rnn.throughput_row import mark_best

        rows = mark_best(self.ledger(attempt.trial_id).rows)
        errors = [r for r in rows if r.status == "error"]
        status = TrialStatus.FAILED if errors and len(errors) == len(rows) else TrialStatus.COMPLETED
        self.finish(attempt, status, error=errors[0].error if errors else None, summary=_best_line(rows),
                    throughput=rows)

    def _commit(self, attempt: Attempt, row: dict[str, Any], evals: list[EvalRecord], throughput: list[Any]) -> None:
        """One durable commit of the trial, or nothing (the rerun trains it again); then the trackers'."""
        tid = row["trial_id"]
        raise_commit_fault(self.faults, tid, row["attempts"], self.store.job_dir)
        self.store.commit_trial(row, evals=evals, throughput=throughput)
        if self.tracker is not None:
            from orchestrator.track.views import StoredCheckpoint

            self.tracker.committed(attempt.trial, row, evals, StoredCheckpoint(self.store.job_dir, tid))


def _evals_seen(ledger: Ledger) -> list[EvalRecord]:
    """The evaluations the events brought, over those of its last pause (a promoted trial
    resumed in this run, whose own events start at its rung)."""
    merged = {r.step: r for r in (ledger.paused_result.evals if ledger.paused_result else ())}
    merged.update(ledger.evals)
    return [merged[s] for s in sorted(merged)]


def _best_line(rows: list[Any]) -> str:
    best = next((r for r in rows if r.is_best), None)
    ooms = [r.batch_size for r in rows if r.status == "oom"]
    text = f"best batch {best.batch_size}: {best.samples_per_s:,.0f} samples/s" if best else "no batch size ran"
    return text + (f"; out of memory at {ooms}" if ooms else "")


def _checkpoint_point(data: bytes) -> Optional[tuple[int, list[EvalRecord]]]:
    """A checkpoint's step and the evaluations up to it (None: unreadable)."""
    from rnn.checkpoint import load_checkpoint
    from rnn.errors import CheckpointError

    try:
        ckpt = load_checkpoint(data)
        return int(ckpt["step"]), [EvalRecord(**r) for r in ckpt.get("evals", ())]
    except (CheckpointError, KeyError, TypeError, ValueError):
        return None
