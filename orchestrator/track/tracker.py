"""The driver's trackers: what the job folder gets, also written to TensorBoard and MLflow.

A :class:`Tracker` is told what the recorder sees (each event, each commit) on the dispatcher's
thread and writes on a thread of its own, so a slow or unreachable server never slows the sweep.
Its sinks (:mod:`~orchestrator.track.tensorboard`, :mod:`~orchestrator.track.mlflow_sink`) write
each (trial, metric, step) once: a point they already hold is skipped.

**When a point is written.** An evaluation is written once no retry can redo it: when the trial
saves a checkpoint at or after its step (a retried attempt resumes from its latest checkpoint and
evaluates the later steps again, which then replace the earlier attempt's), when it pauses at a
rung, or when it ends (its committed evaluations, the job folder's truth). So a trial whose
validation stops improving shows its later points when it ends.

**When it is written.** A sink may buffer what it is told (MLflow does: a database write costs
per call, not per row); the tracker flushes the sinks about once a second (:data:`FLUSH_S`) while
there is something new, and before it closes them.

**Never fatal.** A sink that raises (a server gone, a locked database, a full disk) is logged once
and turned off for the rest of the run; the job folder keeps everything, and ``run`` (at its
start) or ``export`` writes what a tracker lacks.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, Protocol

from orchestrator.run.events import Checkpointed, Evaluated, Event
from orchestrator.track.views import Point, TrialEnd, TrialView, end_of, eval_point, flatten
from rnn.events import EvalRecord, TrialStatus

log = logging.getLogger(__name__)

#: How long the end of a run waits for trackers that have stopped writing what is queued.
CLOSE_TIMEOUT_S = 60.0
#: How long what a sink buffers may wait before it is written.
FLUSH_S = 1.0
_CONFIG_ROOTS = ("data.", "model.", "train.", "throughput.")


class Sink(Protocol):
    name: str

    def holds(self, trial_id: str, status: str) -> bool: ...
    def log(self, view: TrialView, points: list[Point]) -> None: ...
    def end(self, view: TrialView, end: Optional[TrialEnd]) -> None: ...
    def finish(self, report_files: list[Path]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class Tracker:
    """Feeds the sinks ``open_sinks()`` makes (on the tracker's thread: an MLflow client's start-up
    takes seconds) from the recorder's events and commits; see the module docstring."""

    def __init__(self, open_sinks: Iterable[Callable[[], Sink]]) -> None:
        self._sinks: list[Sink] = []
        self.failed: list[str] = []  # the sinks that could not open or were turned off (read after close)
        self._queue: queue.Queue[Optional[Callable[[Sink], None]]] = queue.Queue()
        self._pending: dict[str, dict[int, EvalRecord]] = {}  # evaluations not yet safe to write
        self._views: dict[str, TrialView] = {}
        self._thread = threading.Thread(target=self._work, args=(list(open_sinks),), name="trackers", daemon=True)
        self._thread.start()

    # --- the dispatcher's thread ----------------------------------------------------------

    def on_event(self, trial: Any, event: Event) -> None:
        """An event of a running trial: an evaluation waits until a checkpoint covers it."""
        if isinstance(event, Evaluated):
            self._pending.setdefault(trial.trial_id, {})[event.record.step] = event.record
        elif isinstance(event, Checkpointed):
            pending = self._pending.get(trial.trial_id, {})
            safe = sorted(s for s in pending if s <= event.step)
            if safe:
                now = time.time()
                points = [eval_point(pending.pop(s), now) for s in safe]
                view = self._view(trial)
                self._submit(lambda sink: sink.log(view, points))

    def resumed(self, trial: Any, evals: list[EvalRecord]) -> None:
        """A trial resumes from a checkpoint an earlier run saved: the evaluations up to it are safe,
        and a killed driver may not have written them (they go before the trial's new ones)."""
        if evals:
            now, view = time.time(), self._view(trial)
            points = [eval_point(r, now) for r in evals]
            self._submit(lambda sink: sink.log(view, points))

    def committed(self, trial: Any, row: Mapping[str, Any], evals: list[EvalRecord],
                  checkpoint: Callable[[], Optional[bytes]]) -> None:
        """A trial's row was committed: its evaluations, then its end (nothing more for a pause)."""
        self._pending.pop(trial.trial_id, None)
        if trial.kind != "train":
            return  # a throughput trial's rows have no steps
        view, now = self._view(trial), time.time()
        points = [eval_point(r, now) for r in evals]
        status = getattr(row["status"], "value", row["status"])
        end = None if status == TrialStatus.PAUSED.value else end_of({**row, "status": status}, checkpoint)
        self._submit(lambda sink: _write_trial(sink, view, points, end))
        if end is not None:
            self._views.pop(trial.trial_id, None)

    def sync(self, trials: list[dict[str, Any]], evals: list[dict[str, Any]],
             checkpoint: Callable[[str], Callable[[], Optional[bytes]]]) -> int:
        """Queue what a job folder holds (its trials rows and evaluations rows): a sink writes what
        it lacks. Returns the number of trials queued."""
        by_trial: dict[str, list[dict[str, Any]]] = {}
        for r in evals:
            by_trial.setdefault(r["trial_id"], []).append(r)
        rows = [r for r in trials if r.get("best_val_loss") is not None or r["trial_id"] in by_trial]
        swept = _varying([_params(r) for r in rows])
        for row in rows:
            tid = row["trial_id"]
            params = _params(row)
            view = TrialView(tid, params, {k: str(params[k]) for k in swept if k in params})
            started = row.get("started_at")
            base = started.timestamp() if started is not None else time.time()
            points = [eval_point(r, base + float(r.get("elapsed_s") or 0.0)) for r in by_trial.get(tid, [])]
            status = str(row["status"])
            end = None if status == TrialStatus.PAUSED.value else end_of(row, checkpoint(tid))
            self._submit(functools.partial(_sync_trial, view=view, points=points, end=end))
        return len(rows)

    def finish(self, report_files: list[Path]) -> None:
        self._submit(lambda sink: sink.finish(report_files))

    def close(self, timeout: Optional[float] = CLOSE_TIMEOUT_S) -> bool:
        """Write what is queued, then close the sinks. The wait lasts while the trackers make
        progress, and gives up after ``timeout`` seconds without any (None: never); False then
        (what was left is in the job folder for the next run or ``export``)."""
        self._queue.put(None)
        left = self._queue.qsize()
        if left > 100:
            log.info("tracking: writing the last %d updates to the trackers", left)
        still = 0.0
        while True:
            self._thread.join(5.0)
            if not self._thread.is_alive():
                return True
            now_left = self._queue.qsize()
            still = 0.0 if now_left < left else still + 5.0
            left = now_left
            if timeout is not None and still >= timeout:
                log.warning("tracking: the trackers wrote nothing for %.0f s; %d updates left unwritten (the job "
                            "folder has it all: rerun, or `python -m orchestrator export DIR`, writes the rest)",
                            still, left)
                return False

    # --- the tracker's thread -------------------------------------------------------------

    def _view(self, trial: Any) -> TrialView:
        view = self._views.get(trial.trial_id)
        if view is None:
            from orchestrator.spec import trial_config

            view = self._views[trial.trial_id] = TrialView(
                trial.trial_id, flatten(trial_config(trial)), {k: str(v) for k, v in trial.overrides.items()})
        return view

    def _submit(self, write: Callable[[Sink], Any]) -> None:
        self._queue.put(write)

    def _work(self, openers: list[Callable[[], Sink]]) -> None:
        for opener in openers:
            try:
                self._sinks.append(opener())
            except Exception as e:  # noqa: BLE001  (never fatal: the job folder is the truth)
                name = getattr(opener, "sink_name", "a tracker")
                self.failed.append(name)
                log.warning("tracking: could not open %s (%s: %s); going on without it",
                            name, type(e).__name__, _first_line(e))
        due: Optional[float] = None  # when what the sinks buffer is to be flushed (monotonic seconds)
        while True:
            try:
                write = self._queue.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
            except queue.Empty:  # nothing new for a while: write what is buffered
                self._each(_flush)
                due = None
                continue
            if write is None:
                break
            self._each(write)
            if due is None:
                due = time.monotonic() + FLUSH_S
            elif time.monotonic() >= due:
                self._each(_flush)
                due = None
        self._each(_flush)
        for sink in self._sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001
                log.debug("tracking: closing %s: %s", sink.name, e)

    def _each(self, write: Callable[[Sink], Any]) -> None:
        for sink in list(self._sinks):
            try:
                write(sink)
            except Exception as e:  # noqa: BLE001
                self._drop(sink, e)

    def _drop(self, sink: Sink, error: BaseException) -> None:
        self._sinks.remove(sink)
        self.failed.append(sink.name)
        log.warning("tracking: %s failed (%s: %s); it is off for the rest of this run. The job folder has "
                    "every result: the next run, or `python -m orchestrator export DIR`, writes what it lacks",
                    sink.name, type(error).__name__, _first_line(error))
        try:
            sink.close()
        except Exception as e:  # noqa: BLE001
            log.debug("tracking: closing %s: %s", sink.name, e)


def _flush(sink: Sink) -> None:
    sink.flush()


def _write_trial(sink: Sink, view: TrialView, points: list[Point], end: Optional[TrialEnd]) -> None:
    sink.log(view, points)
    sink.end(view, end)


def _sync_trial(sink: Sink, view: TrialView, points: list[Point], end: Optional[TrialEnd]) -> None:
    """A committed trial from the job folder: nothing to do where the sink holds its end already
    (a finished job run again: no reading back of every trial's history)."""
    if end is None or not sink.holds(view.trial_id, end.status):
        _write_trial(sink, view, points, end)


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    """A trials row's config, from its dotted columns."""
    return {k: v for k, v in row.items() if k.startswith(_CONFIG_ROOTS)}


def _varying(configs: list[dict[str, Any]]) -> list[str]:
    """The config paths whose values differ between trials (a job folder's swept settings)."""
    if len(configs) < 2:
        return ["train.seed"] if configs else []
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else "no message"
    return line if len(line) <= 200 else line[:197] + "..."
