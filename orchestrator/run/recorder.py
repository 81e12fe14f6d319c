"""From a trial's events to its records in the job folder, and its progress lines.

:class:`TrialState` is what the driver knows of one trial on its way through the pool (the
attempt, the last checkpoint as bytes for a retry, the evaluations seen so far, when it was last
heard from). :class:`Recorder` turns events into that state and, when the trial ends, into one
durable commit of its row, evaluations and throughput rows.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Optional

from orchestrator.durations import format_duration
from orchestrator.results import ResultsStore, trial_row
from orchestrator.results.store import RESUME_CHECKPOINT
from orchestrator.run.events import Checkpointed, Ended, Evaluated, Event, Measured, Paused, Raised, Started
from orchestrator.run.faults import Fault, raise_commit_fault
from orchestrator.run.progress import Progress, trial_label
from orchestrator.spec import Trial
from rnn.events import EvalRecord, TrainResult, TrialStatus

log = logging.getLogger(__name__)


@dataclass
class TrialState:
    """A trial on its way through the pool. The checkpoint bytes are held only while it runs."""

    trial: Trial
    tag: str
    attempt: int = 1
    resume: Optional[bytes] = None
    resume_step: Optional[int] = None
    resume_loaded: bool = False
    started_at: Optional[datetime] = None  # first start in this invocation (wall clock)
    first_started_mono: Optional[float] = None
    attempt_started_mono: float = 0.0
    last_event_mono: float = 0.0
    heard_this_attempt: bool = False
    longest_gap_s: float = 0.0
    warned_mono: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    evals: dict[int, EvalRecord] = field(default_factory=dict)  # by step, across attempts
    rows: list[Any] = field(default_factory=list)  # throughput rows of this attempt
    # Successive halving: the pause rung it runs to, and its result when it last paused (its
    # resume checkpoint is then checkpoints/<id>/last.pt, and ``resume`` holds those bytes).
    target: int = 0
    paused_result: Optional[TrainResult] = None
    has_resume_point: bool = False
    paused_mono: Optional[float] = None  # when it paused: waiting at a rung is not running time

    @property
    def throughput(self) -> bool:
        return self.trial.throughput_config is not None

    def heard(self, now: float) -> None:
        """An event arrived: the gap since the last one sets the pace a stall is judged by."""
        if self.last_event_mono:
            self.longest_gap_s = max(self.longest_gap_s, now - self.last_event_mono)
        self.last_event_mono = now
        self.heard_this_attempt = True


class Recorder:
    """Applies events to :class:`TrialState` objects and commits finished trials to ``store``.

    Also collects what the manifest records: corpus name -> sha256, and one entry per distinct
    (host, device, device name, precision).
    """

    def __init__(self, store: ResultsStore, progress: Progress, total: int, faults: tuple[Fault, ...] = ()) -> None:
        self.store = store
        self.faults = faults
        self.progress = progress
        self.total = total
        self.statuses: dict[str, int] = {}
        self.corpora: dict[str, str] = {}
        self.devices: list[dict[str, Any]] = []

    def state(self, trial: Trial) -> TrialState:
        label = trial_label(trial.overrides)
        return TrialState(trial=trial, tag=f"{trial.index + 1}/{self.total} {trial.trial_id} {label}".strip())

    def load_resume(self, state: TrialState) -> None:
        """Read the trial's stored checkpoint when it is first dispatched (never up front)."""
        if state.resume_loaded:
            return
        state.resume_loaded = True
        tid = state.trial.trial_id
        # a paused trial resumes from its rung (last.pt); anything else from its best checkpoint
        saved = (self.store.read_checkpoint_bytes(tid, RESUME_CHECKPOINT) if state.has_resume_point
                 else self.store.read_checkpoint_bytes(tid))
        if saved is None:
            return
        step = _checkpoint_step(saved)
        if step is None:
            log.warning("[%s] its saved checkpoint is unreadable; starting it over", state.tag)
            return
        state.resume, state.resume_step = saved, step

    def on_event(self, state: TrialState, event: Event) -> bool:
        """Apply one event; True when it was the trial's last (it has been committed)."""
        if isinstance(event, Started):
            self._started(state, event.info)
        elif isinstance(event, Evaluated):
            r = event.record
            state.evals[r.step] = r
            self.progress.line(
                state.tag,
                f"step {r.step}: train {r.train_loss:.4f}, val {r.val_loss:.4f} ({r.val_bpc:.3f} bpc, "
                f"acc {r.val_accuracy:.3f}), {r.samples_per_s:,.0f} samples/s",
            )
        elif isinstance(event, Measured):
            row = event.row
            state.rows.append(row)
            state.info.update(device=row.device, precision=row.precision, recurrence=row.recurrence, tf32=row.tf32)
            if row.status == "ok":
                speed = f"{row.samples_per_s:,.0f} samples/s, {row.step_time_ms:.1f} ms/step"
            else:
                speed = (row.error or "").splitlines()[0] if row.error else ""
            status = getattr(row.status, "value", row.status)  # a ThroughputStatus
            self.progress.line(state.tag, f"batch {row.batch_size}: {status} {speed}".rstrip())
        elif isinstance(event, Checkpointed):
            state.resume, state.resume_step = event.data, event.step
            self.store.write_checkpoint_bytes(state.trial.trial_id, event.data)
        elif isinstance(event, Ended):
            if event.result is None:
                self._finish_throughput(state)
            elif event.result.status is TrialStatus.PAUSED:  # a pause must carry its resume checkpoint
                self.finish(state, TrialStatus.FAILED, error="the trainer paused without a resume checkpoint")
            else:
                self.finish(state, event.result.status, result=event.result, error=event.result.error)
            return True
        elif isinstance(event, Paused):
            self.pause(state, event)
            return True
        elif isinstance(event, Raised):
            self.finish(state, TrialStatus.OOM if event.oom else TrialStatus.FAILED, error=event.error)
            return True
        return False

    def pause(self, state: TrialState, event: Paused) -> None:
        """Make a pause at a rung durable: the resume checkpoint first, then a ``paused`` part
        (its row and evaluations so far), which a later ``pruned`` or final part supersedes."""
        tid = state.trial.trial_id
        self.store.write_checkpoint_bytes(tid, event.data, RESUME_CHECKPOINT)
        state.resume, state.resume_step, state.resume_loaded = event.data, event.step, True
        state.has_resume_point = True
        state.paused_result = event.result
        self._commit(self._row(state, TrialStatus.PAUSED, event.result, None), list(event.result.evals), [])
        best = event.result.best_val_loss
        how = f"best val {best:.4f} at step {event.result.best_step}" if best is not None else "no evaluation"
        self.progress.trial_paused(state.tag, f"paused at step {event.step} ({how})")

    def prune(self, state: TrialState, why: str) -> None:
        """End a paused trial as ``pruned``: its paused row and evaluations, committed again."""
        result = state.paused_result
        assert result is not None, "only a paused trial can be pruned"
        self.finish(state, TrialStatus.PRUNED, result=replace(result, status=TrialStatus.PRUNED),
                    summary=why, running=False)

    def finish(
        self,
        state: TrialState,
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
        tid = state.trial.trial_id
        evals = list(result.evals) if result is not None else self._evals_seen(state)
        self._commit(self._row(state, status, result, error), evals, throughput or [])
        if state.has_resume_point:  # a successive-halving trial has ended: its resume point is not needed
            self.store.delete_checkpoint(tid, RESUME_CHECKPOINT)
            state.has_resume_point = False
        self.statuses[status.value] = self.statuses.get(status.value, 0) + 1
        # Running time: a trial pruned at a rung stopped running when it paused there.
        ended = state.paused_mono if state.paused_mono is not None else time.monotonic()
        duration = ended - (state.first_started_mono or ended)
        if summary is not None:
            msg = f"{status.value}: {summary} in {format_duration(duration)}"
        elif result is not None and result.best_val_loss is not None:
            msg = (f"{status.value}: best val {result.best_val_loss:.4f} ({result.best_val_bpc:.3f} bpc) at step "
                   f"{result.best_step}, {result.steps} steps in {format_duration(duration)}")
        else:
            msg = f"{status.value}: {error.splitlines()[0] if error else 'no evaluation'}"
        state.resume = None  # the bytes are on disk; hold nothing for a finished trial
        state.paused_result = None
        self.progress.trial_finished(state.tag, msg, duration, ok=status.is_success() or status is TrialStatus.PRUNED,
                                     running=running)

    # --- pieces ---------------------------------------------------------------------------

    def _evals_seen(self, state: TrialState) -> list[EvalRecord]:
        """The evaluations the events brought, over those of its last pause (a promoted trial
        resumed in this run, whose own events start at its rung)."""
        merged = {r.step: r for r in (state.paused_result.evals if state.paused_result else ())}
        merged.update(state.evals)
        return [merged[s] for s in sorted(merged)]

    def _row(self, state: TrialState, status: TrialStatus, result: Optional[TrainResult],
             error: Optional[str]) -> dict[str, Any]:
        tid = state.trial.trial_id
        info = dict(state.info)
        evals = self._evals_seen(state) if result is None else []
        if evals:
            best = min(evals, key=lambda r: r.val_loss if math.isfinite(r.val_loss) else math.inf)
            info.update(best_val_loss=best.val_loss, best_val_bpc=best.val_bpc,
                        best_val_accuracy=best.val_accuracy, best_step=best.step, steps=evals[-1].step)
        if status is TrialStatus.PRUNED and result is not None:  # its best checkpoint is on disk, if it had one
            has_ckpt = result.best_checkpoint is not None
        else:
            has_ckpt = state.resume is not None and (result is None or result.best_checkpoint is not None)
        return trial_row(
            state.trial,
            status=status,
            result=result,
            error=error,
            attempts=state.attempt,
            started_at=state.started_at,
            finished_at=datetime.now(timezone.utc),
            info=info,
            checkpoint=self.store.checkpoint_relpath(tid) if has_ckpt else None,
        )

    def _started(self, state: TrialState, info: dict[str, Any]) -> None:
        state.info.update(info)
        if "corpus" in info:
            self.corpora[info["corpus"]] = info["corpus_sha256"]
        if "device" in info:
            device = {k: info.get(k) for k in ("host", "device", "device_name", "precision")}
            if device not in self.devices:
                self.devices.append(device)
            self.progress.line(state.tag, f"running on {info['host']} (pid {info.get('pid')}, {info['device']}, "
                               f"{info['precision']}, {info['params']:,} params)")
        else:
            self.progress.line(state.tag, f"running on {info.get('host')} (pid {info.get('pid')})")

    def _finish_throughput(self, state: TrialState) -> None:
        from rnn.throughput import mark_best

        rows = mark_best(state.rows)
        errors = [r for r in rows if r.status == "error"]
        status = TrialStatus.FAILED if errors and len(errors) == len(rows) else TrialStatus.COMPLETED
        self.finish(state, status, error=errors[0].error if errors else None, summary=_best_line(rows),
                    throughput=rows)

    def _commit(self, row: dict[str, Any], evals: list[EvalRecord], throughput: list[Any]) -> None:
        """One durable commit of the trial, or nothing (the rerun trains it again)."""
        raise_commit_fault(self.faults, row["trial_id"], row["attempts"], self.store.job_dir)
        self.store.commit_trial(row, evals=evals, throughput=throughput)

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
