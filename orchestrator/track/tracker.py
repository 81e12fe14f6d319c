"""The driver's trackers: what the job folder gets, also written to TensorBoard and MLflow.

A :class:`Tracker` is told what the recorder sees (each event, each commit) on the dispatcher's
thread and hands it to a process of its own (:mod:`~orchestrator.track.writer`), which writes the
sinks (:mod:`~orchestrator.track.tensorboard`, :mod:`~orchestrator.track.mlflow_sink`), so a slow
or unreachable server, or a sink's own CPU time, never slows the sweep. Its sinks write each
(trial, metric, step) once: a point they already hold is skipped.

**When a point is written.** An evaluation is written once no retry can redo it: when the trial
saves a checkpoint at or after its step (a retried attempt resumes from its latest checkpoint and
evaluates the later steps again, which then replace the earlier attempt's), when it pauses at a
rung, or when it ends (its committed evaluations, the job folder's truth). So a trial whose
validation stops improving shows its later points when it ends.

**When it is written.** What the dispatcher tells goes to the trackers' process in batches, at
most :data:`SEND_S` after it happened. A sink may buffer what it is told (MLflow does: a database
write costs per call, not per row); the trackers' process flushes the sinks about once a second
(:data:`~orchestrator.track.sinks.FLUSH_S`) while there is something new, and before it closes them.

**Never fatal.** A sink that raises (a server gone, a locked database, a full disk) is logged once
and turned off for the rest of the run; a trackers' process that ends early is logged once and
the run goes on without it. The job folder keeps everything, and ``run`` (at its start) or
``export`` writes what a tracker lacks.

The sinks' openers, the checkpoints' readers (``TrialEnd.checkpoint``) and what they are told
are pickled to the trackers' process: openers are ``functools.partial`` objects of importable
callables (:func:`orchestrator.track.sink_openers`), a checkpoint a
:class:`~orchestrator.track.views.StoredCheckpoint`.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Optional

from orchestrator.run.events import Checkpointed, Evaluated, Event
from orchestrator.track.sinks import Sink, finish_job, first_line, log_points, sink_name, sync_trial, write_trial
from orchestrator.track.views import TrialView, end_of, eval_point, flatten
from rnn.events import EvalRecord, TrialStatus

log = logging.getLogger(__name__)

#: How long the end of a run waits for trackers that have stopped writing what is queued.
CLOSE_TIMEOUT_S = 60.0
#: How long what the dispatcher tells may wait before it goes to the trackers' process (one
#: write a batch: the driver's thread that sends it wakes a few times a second, not per event).
SEND_S = 0.2
_CONFIG_ROOTS = ("data.", "model.", "train.", "throughput.")


class Tracker:
    """Feeds the sinks ``open_sinks()`` makes (in the trackers' process: an MLflow client's start-up
    takes seconds) from the recorder's events and commits; see the module docstring."""

    def __init__(self, open_sinks: Optional[Iterable[Callable[[], Sink]]] = None, preload: Sequence[str] = ()) -> None:
        """Starts the trackers' process, importing the ``preload`` modules at once, and gives it
        ``open_sinks`` (None: later, with :meth:`open`, so that a driver can start the process
        before Ray and have the sinks' libraries imported by the time it has sinks to give)."""
        self._names: list[str] = []
        self.failed: list[str] = []  # the sinks that could not open or were turned off (read after close)
        self.cpu_s: Optional[float] = None  # the trackers' process's CPU time, once it has closed the sinks
        self._queue: queue.Queue[Optional[tuple[Callable[..., Any], tuple[Any, ...]]]] = queue.Queue()
        self._pending: dict[str, dict[int, EvalRecord]] = {}  # evaluations not yet safe to write
        self._views: dict[str, TrialView] = {}
        self._sent = self._done = 0  # writes sent to the trackers' process, and done there
        self._heard = time.monotonic()  # when the trackers' process last answered
        self._closed = threading.Event()  # its last answer, or its end, has been read
        self._given_up = False  # close() ended it (a hung sink, or never given any)
        self._sender: Optional[threading.Thread] = None
        self._closed_as: Optional[bool] = None  # what close() returned
        self._start_error: Optional[str] = None  # why the process could not start, said once sinks are given
        replies_r, replies_w = os.pipe()
        try:
            self._process: Optional[subprocess.Popen[bytes]] = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.track.writer", str(replies_w), *preload], stdin=subprocess.PIPE,
                pass_fds=(replies_w,), env=_child_env(), start_new_session=True)
        except OSError as e:
            os.close(replies_r)
            self._process = None
            self._start_error = f"could not start ({e})"
            self._closed.set()
        finally:
            os.close(replies_w)
        if self._process is not None:
            threading.Thread(target=self._read, args=(os.fdopen(replies_r, "rb"),), name="tracker-replies",
                             daemon=True).start()
        if open_sinks is not None:
            self.open(open_sinks)

    def open(self, open_sinks: Iterable[Callable[[], Sink]]) -> None:
        """Gives the trackers' process its sinks' openers; what the tracker is told from now on
        goes to them."""
        if self._sender is not None:
            raise RuntimeError("the tracker's sinks are already given")
        openers = list(open_sinks)
        self._names = [sink_name(o) for o in openers]
        if self._start_error is not None:
            self._lost(self._start_error)
        self._sender = threading.Thread(target=self._send, args=(openers,), name="trackers", daemon=True)
        self._sender.start()

    @property
    def pid(self) -> Optional[int]:
        """The trackers' process (None: it could not start)."""
        return self._process.pid if self._process is not None else None

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
                self._submit(log_points, view, points)

    def resumed(self, trial: Any, evals: list[EvalRecord]) -> None:
        """A trial resumes from a checkpoint an earlier run saved: the evaluations up to it are safe,
        and a killed driver may not have written them (they go before the trial's new ones)."""
        if evals:
            now, view = time.time(), self._view(trial)
            points = [eval_point(r, now) for r in evals]
            self._submit(log_points, view, points)

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
        self._submit(write_trial, view, points, end)
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
            self._submit(sync_trial, view, points, end)
        return len(rows)

    def finish(self, report_files: list[Path]) -> None:
        self._submit(finish_job, report_files)

    def close(self, timeout: Optional[float] = CLOSE_TIMEOUT_S) -> bool:
        """Write what is queued, then close the sinks. The wait lasts while the trackers make
        progress, and gives up after ``timeout`` seconds without any (None: never); False then
        (what was left is in the job folder for the next run or ``export``). Closing again returns
        the same; closing a tracker never given its sinks ends its process at once."""
        if self._closed_as is not None:
            return self._closed_as
        sender = self._sender
        if sender is None:  # never given any sinks: nothing to write
            self._closed_as = True
            if self._process is not None:
                self._given_up = True
                self._process.kill()
                self._process.wait()
                if self._process.stdin is not None:
                    self._process.stdin.close()
            return True
        self._closed_as = self._close(sender, timeout)
        return self._closed_as

    def _close(self, sender: threading.Thread, timeout: Optional[float]) -> bool:
        self._queue.put(None)
        sender.join()
        self._heard = time.monotonic()  # the wait starts now, however long the trackers had nothing to do
        if self._sent - self._done > 100:
            log.info("tracking: writing the last %d updates to the trackers", self._sent - self._done)
        while not self._closed.wait(1.0):
            still = time.monotonic() - self._heard
            if timeout is not None and still >= timeout:
                log.warning("tracking: the trackers wrote nothing for %.0f s; %d updates left unwritten (the job "
                            "folder has it all: rerun, or `python -m orchestrator export DIR`, writes the rest)",
                            still, self._sent - self._done)
                self._end_process(kill=True)
                return False
        self._end_process()
        if self.cpu_s is not None:
            log.info("tracking: written; the trackers' process used %.1f s of CPU", self.cpu_s)
        return True

    # --- the tracker's threads ------------------------------------------------------------

    def _view(self, trial: Any) -> TrialView:
        view = self._views.get(trial.trial_id)
        if view is None:
            from orchestrator.spec import trial_config

            view = self._views[trial.trial_id] = TrialView(
                trial.trial_id, flatten(trial_config(trial)), {k: str(v) for k, v in trial.overrides.items()})
        return view

    def _submit(self, function: Callable[..., Any], *args: Any) -> None:
        self._queue.put((function, args))

    def _send(self, openers: list[Callable[[], Sink]]) -> None:
        """Hands the openers, then what is queued, to the trackers' process in batches."""
        stream = self._write(self._process.stdin if self._process is not None else None, [openers], 0)
        ended = False
        while not ended:
            batch = [self._queue.get()]
            time.sleep(SEND_S)  # what follows it within SEND_S goes in the same write
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in batch:
                batch, ended = batch[:batch.index(None)], True
            frames = ([batch] if batch else []) + ([None] if ended else [])
            stream = self._write(stream, frames, len(batch), close=ended)

    def _write(self, stream: Optional[IO[bytes]], frames: list[Any], writes: int,
               close: bool = False) -> Optional[IO[bytes]]:
        """``frames`` to the trackers' process; None once it is gone (what is told then is dropped:
        the job folder has it)."""
        if stream is None:
            return None
        try:
            for frame in frames:
                pickle.dump(frame, stream, protocol=pickle.HIGHEST_PROTOCOL)
            stream.flush()
            self._sent += writes
            if close:
                stream.close()
            return stream
        except (OSError, pickle.PicklingError) as e:
            self._lost(f"stopped reading ({type(e).__name__}: {first_line(e)})")
            return None

    def _read(self, replies: IO[bytes]) -> None:
        """The trackers' process's answers: its log lines, failed sinks, progress and its end."""
        with replies:
            while True:
                try:
                    message = pickle.load(replies)
                except (EOFError, OSError, pickle.UnpicklingError):
                    break
                self._heard = time.monotonic()
                kind = message[0]
                if kind == "log":
                    logging.getLogger(message[2]).log(message[1], "%s", message[3])
                elif kind == "failed":
                    self.failed.append(message[1])
                elif kind == "done":
                    self._done = message[1]
                elif kind == "closed":
                    self.cpu_s = message[1]
                    self._closed.set()
                    return
        process = self._process
        code = process.wait() if process is not None else None
        self._lost(f"ended (exit status {code})")
        self._closed.set()

    def _lost(self, how: str) -> None:
        """The trackers' process is gone before its end: every sink not already failed is off."""
        if self._given_up:
            return  # ended by close(), which said so
        off = [n for n in self._names if n not in self.failed]
        if off:
            self.failed.extend(off)
            log.warning("tracking: the trackers' process %s; %s off for the rest of this run. The job folder "
                        "has every result: the next run, or `python -m orchestrator export DIR`, writes what "
                        "they lack", how, ", ".join(off))

    def _end_process(self, kill: bool = False) -> None:
        """Waits for the trackers' process to exit (it has closed its sinks), or kills it."""
        process = self._process
        if process is None:
            return
        self._given_up = kill
        try:
            process.wait(0.0 if kill else 5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    """A trials row's config, from its dotted columns."""
    return {k: v for k, v in row.items() if k.startswith(_CONFIG_ROOTS)}


def _varying(configs: list[dict[str, Any]]) -> list[str]:
    """The config paths whose values differ between trials (a job folder's swept settings)."""
    if len(configs) < 2:
        return ["train.seed"] if configs else []
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def _child_env() -> dict[str, str]:
    """The driver's environment, with this package importable wherever the trackers' process starts."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
