"""The dispatch loop: a pool of reusable workers that follows the cluster, retries, liveness.

Policy only; the mechanism is a :class:`~orchestrator.run.backend.Backend` (Ray's, or a
scripted one in tests). Each turn of the loop:

1. **Grow the pool** to ``min(max_concurrent, trials left)`` workers, capped by what fits when
   the backend's size is fixed (embedded Ray). On a cluster that may grow, the workers that
   cannot be placed yet wait, and that wait is the autoscaler's demand; a node that joins
   places them. A lost worker is replaced the same way.
2. **Hand out trials** to ready idle workers, each from the driver's last checkpoint of it
   (read from the job folder when the trial is first dispatched, never up front).
3. **Take the events** that arrived and record them (:mod:`orchestrator.run.recorder`).
   Each trial is handed out with the pause point its scheduler policy gives it
   (:mod:`orchestrator.run.scheduler`; successive halving's next rung); a trial that paused
   there waits, and after the events the policy's decisions are applied: promoted trials go
   to the front of the queue (resumed from their pause's checkpoint), pruned ones are
   committed as ``pruned``.
4. **Watch liveness.** A trial silent for its stall timeout is killed and retried as lost
   ("stalled"); a trial past ``trial_timeout_s`` ends as ``timeout``, not retried; a trial
   silent for a minute is named in the log.
5. **Shrink the pool** once nothing is pending (or paused, and so perhaps promoted soon): idle
   workers keep a reservation, and workers still waiting for a node are demand that is no
   longer needed.

What is retried: a lost worker or node and a stalled trial, up to ``max_retries`` times, from
the last checkpoint. Not retried: out of memory (``oom``), a non-finite loss (``diverged``), an
exception in the trainer (``failed``), a runtime-env set-up failure (``failed``), the hard
timeout (``timeout``), and trials no node can ever host (``failed``, with the reason).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from orchestrator.durations import format_duration
from orchestrator.errors import UsageError
from orchestrator.results import ResultsStore
from orchestrator.run.attempt import Attempt
from orchestrator.run.backend import Assignment, Backend, Notice, NoticeKind
from orchestrator.run.events import HEARTBEAT_S, SLOW_PHASES, Beat, Paused
from orchestrator.run.faults import Fault
from orchestrator.run.progress import Progress
from orchestrator.run.recorder import Recorder
from orchestrator.run.scheduler import RunToEnd, Scheduler
from orchestrator.spec import ResourcesSpec, Trial
from rnn.events import TrialStatus

if TYPE_CHECKING:
    from orchestrator.track import Tracker

log = logging.getLogger(__name__)

#: How long one turn of the loop waits for an event.
POLL_S = 0.5
#: The default stall timeout: while a trial trains between evaluations, BEAT_STALL_FACTOR x the
#: time between its heartbeats (4 x 15 s: a hung worker is caught in a minute); in any other
#: phase (set-up, compile, evaluation), max(STALL_FLOOR_S, STALL_PACE_FACTOR x the longest gap
#: seen between its events).
BEAT_STALL_FACTOR = 4.0
STALL_FLOOR_S = 600.0
#: The floor while a trial says it prepares its data or compiles (:data:`~orchestrator.run.events.SLOW_PHASES`):
#: a 100 MB corpus's tokenizer or a GPU compile may take many minutes, and it is not hung.
SLOW_PHASE_FLOOR_S = 1800.0
STALL_PACE_FACTOR = 5.0
#: A trial silent this long (or half its stall timeout, if shorter) is named in the log, once a minute.
SILENT_NOTE_S = 60.0
#: Consecutive worker start failures (other than set-up errors) before the next trial is failed.
MAX_START_FAILURES = 10


@dataclass
class SweepSummary:
    """What happened to the trials of one invocation."""

    total: int
    skipped: int
    statuses: dict[str, int]
    interrupted: bool


def beat_interval(event: object) -> Optional[float]:
    """For a training heartbeat, the seconds within which the next is due: the heartbeat period,
    or one step at the trial's pace where a step takes longer; None for any other event."""
    if not isinstance(event, Beat) or event.phase != "training":
        return None
    step_s = 1.0 / event.steps_per_s if event.steps_per_s else 0.0
    return max(HEARTBEAT_S, step_s)


class Dispatcher:
    """Runs ``trials`` on ``backend`` and records them in ``store``.

    Args:
        trials: the trials to run (finished ones already filtered out).
        resources: the spec's ``resources`` section.
        store: where rows, evaluations and checkpoints go.
        backend: what runs the workers.
        total: the sweep's size including skipped trials, for the progress count.
        faults: injected faults (chaos drills), see :mod:`orchestrator.run.faults`.
        stop: set by a signal handler to stop the sweep early.
        scheduler: where trials pause and what becomes of them (default: every trial runs to its end).
        tracker: TensorBoard/MLflow, told what the recorder sees (None: the spec has no ``tracking``).
    """

    def __init__(
        self,
        trials: list[Trial],
        resources: ResourcesSpec,
        store: ResultsStore,
        backend: Backend,
        *,
        total: Optional[int] = None,
        faults: tuple[Fault, ...] = (),
        stop: Optional[threading.Event] = None,
        scheduler: Optional[Scheduler] = None,
        tracker: Optional[Tracker] = None,
    ) -> None:
        self.trials = trials
        self.res = resources
        self.backend = backend
        self.scheduler: Scheduler = scheduler if scheduler is not None else RunToEnd()
        to_run = len(trials) + self.scheduler.unproposed()
        self.total = total if total is not None else to_run
        self.faults = faults
        self.stop = stop or threading.Event()
        self.progress = Progress(to_run, max(1, min(resources.max_concurrent, to_run)))
        self.recorder = Recorder(store, self.progress, faults, on_finished=self.scheduler.on_ended, tracker=tracker)
        self._pending: collections.deque[Attempt] = collections.deque()
        self._starting: set[int] = set()
        self._idle: list[int] = []
        self._busy: dict[int, Attempt] = {}
        self._start_failures = 0
        self._paused: dict[str, Attempt] = {}  # waiting at a pause point for the scheduler's decision

    @property
    def corpora(self) -> dict[str, str]:
        return self.recorder.corpora

    @property
    def devices(self) -> list[dict]:
        return self.recorder.devices

    # ------------------------------------------------------------------ main loop
    def run(self) -> SweepSummary:
        to_run = len(self.trials) + self.scheduler.unproposed()
        skipped = self.total - to_run
        capacity = self.backend.capacity()
        if capacity == 0 and to_run:
            raise UsageError(
                f"resources: this machine cannot fit one trial: each asks for {self.res.cpus_per_trial:g} CPU and "
                f"{self.res.gpus_per_trial:g} GPU; lower resources.cpus_per_trial / gpus_per_trial"
            )
        log.info(
            "running %d trial%s (%d finished earlier, skipped) on up to %d workers of %g CPU / %g GPU each%s",
            to_run, "" if to_run == 1 else "s", skipped,
            min(self.res.max_concurrent, capacity or self.res.max_concurrent),
            self.res.cpus_per_trial, self.res.gpus_per_trial,
            "" if capacity is not None else " (the pool follows the cluster)",
        )
        for trial in self.trials:
            attempt = Attempt.of(trial, self.total)
            restored = self.scheduler.paused_on_disk(trial.trial_id)
            if restored is not None:  # paused at a rung when an earlier run stopped
                self.recorder.restore_paused(trial.trial_id, restored)
                self._paused[trial.trial_id] = attempt
            else:
                self._pending.append(attempt)
        try:
            self._decide()
            while self._unfinished() and not self.stop.is_set():
                self._grow()
                self._hand_out()
                for notice in self.backend.poll(POLL_S):
                    self._on_notice(notice)
                self._decide()
                now = time.monotonic()
                self._watch(now)
                if (self._pending or self.scheduler.unproposed()) and self._starting and not (self._busy or self._idle):
                    self._check_hostable()
                if not (self._pending or self._paused or self.scheduler.unproposed()):
                    self._shrink()  # (a paused trial may be promoted soon, a proposal may come)
                self.backend.check()
        finally:
            self.backend.close()
        interrupted = self.stop.is_set() and self._unfinished()
        if interrupted:
            log.warning(
                "interrupted: %d trials stopped, paused or not started; run the same command again to resume them",
                len(self._pending) + len(self._busy) + len(self._paused) + self.scheduler.unproposed(),
            )
        return SweepSummary(self.total, skipped, dict(self.recorder.statuses), interrupted)

    def _unfinished(self) -> bool:
        return bool(self._pending or self._busy or self._paused or self.scheduler.unproposed())

    # ------------------------------------------------------------------ the pool
    def _grow(self) -> None:
        want = min(self.res.max_concurrent, len(self._pending) + len(self._busy) + self.scheduler.unproposed())
        capacity = self.backend.capacity()
        if capacity is not None:
            want = min(want, capacity)
        while len(self._starting) + len(self._idle) + len(self._busy) < want:
            self._starting.add(self.backend.start_worker())

    def _shrink(self) -> None:
        for worker in [*self._idle, *self._starting]:
            self.backend.kill(worker)
        self._idle.clear()
        self._starting.clear()

    def _hand_out(self) -> None:
        while self._idle and (self._pending or self._proposed()):
            worker, attempt = self._idle.pop(), self._pending.popleft()
            trial, tid = attempt.trial, attempt.trial_id
            ledger = self.recorder.launching(attempt)
            resume_step = ledger.resume_step if ledger.resume is not None else None
            # A ``commit`` fault acts on the driver (the recorder), not in the worker.
            fault = next((f for f in self.faults if f.kind != "commit" and f.applies(tid, attempt.number)), None)
            self.backend.launch(worker, Assignment(
                trial_id=tid,
                run_config=trial.run_config,
                throughput_config=trial.throughput_config,
                attempt=attempt.number,
                resume=ledger.resume,
                fault=fault,
                pause_at=self.scheduler.pause_at(tid, resume_step),
            ))
            attempt.launched(time.monotonic())
            self._busy[worker] = attempt
            self.progress.slots = max(1, len(self._busy))
            how = f" from checkpoint at step {resume_step}" if resume_step is not None else ""
            self.progress.trial_started(attempt.tag, f"started (attempt {attempt.number}){how}")

    def _proposed(self) -> bool:
        """Ask the scheduler for new trials (a search's next proposal) onto the queue; False if none came."""
        trials = self.scheduler.propose() if self.scheduler.unproposed() else []
        self._pending.extend(Attempt.of(trial, self.total) for trial in trials)
        return bool(trials)

    # ------------------------------------------------------------------ notices
    def _on_notice(self, n: Notice) -> None:
        if n.kind is NoticeKind.READY:
            if n.worker in self._starting:
                self._starting.discard(n.worker)
                self._idle.append(n.worker)
                self._start_failures = 0
                log.info("worker up on %s: %d busy, %d idle, %d starting or waiting for resources",
                         n.reason, len(self._busy), len(self._idle), len(self._starting))
        elif n.kind is NoticeKind.START_FAILED:
            self._start_failed(n)
        elif n.kind is NoticeKind.EVENT:
            attempt = self._busy.get(n.worker)
            if attempt is None or n.event is None:
                return
            slow = n.event.phase if isinstance(n.event, Beat) and n.event.phase in SLOW_PHASES else None
            attempt.heard(time.monotonic(), beat_interval(n.event), slow)
            if self.recorder.on_event(attempt, n.event):
                del self._busy[n.worker]
                self._idle.append(n.worker)
                if isinstance(n.event, Paused):
                    self.scheduler.on_paused(attempt.trial_id, n.event.step, n.event.result.evals)
                    self._paused[attempt.trial_id] = attempt
                    attempt.paused(time.monotonic())
        elif n.kind is NoticeKind.END:
            attempt = self._busy.pop(n.worker, None)
            if attempt is not None:  # the stream ended without a last event
                self.recorder.finish(attempt, TrialStatus.FAILED, error="the trainer stopped without a result")
                self._idle.append(n.worker)
        elif n.kind is NoticeKind.LOST:
            self._lost(n)

    # ------------------------------------------------------------------ the scheduler
    def _decide(self) -> None:
        """Apply the scheduler's decisions on the paused trials: promoted ones resume ahead of
        trials not started, pruned ones are committed as ``pruned``."""
        if not self._paused:
            return
        active = [a.trial_id for a in self._pending] + [a.trial_id for a in self._busy.values()]
        promote, prune = self.scheduler.decide(active)
        now = time.monotonic()
        for move in promote:  # lowest rung first, so the highest rung's promotion ends up first in line
            attempt = self._paused.pop(move.trial_id)
            attempt.resumed(now)
            self._pending.appendleft(attempt)
            self.progress.line(attempt.tag, move.why)
        for move in prune:
            self.recorder.prune(self._paused.pop(move.trial_id), move.why)

    def _start_failed(self, n: Notice) -> None:
        self._starting.discard(n.worker)
        self.backend.kill(n.worker)
        self._start_failures += 1
        log.warning("a worker could not be started: %s", n.reason)
        if self._pending and (n.setup_failed or self._start_failures >= MAX_START_FAILURES):
            attempt = self._pending.popleft()
            self.progress.trial_started(attempt.tag, "could not start a worker for it")
            self.recorder.finish(attempt, TrialStatus.FAILED, error=f"the worker could not be started: {n.reason}")
            self._start_failures = 0

    def _lost(self, n: Notice) -> None:
        self.backend.kill(n.worker)
        self._starting.discard(n.worker)
        if n.worker in self._idle:
            self._idle.remove(n.worker)
        attempt = self._busy.pop(n.worker, None)
        if attempt is None:
            return
        if n.oom:
            self.recorder.finish(attempt, TrialStatus.OOM, error=n.reason)
        elif n.setup_failed:
            self.recorder.finish(attempt, TrialStatus.FAILED, error=n.reason)
        else:
            self.progress.line(attempt.tag, f"lost its worker ({n.reason})")
            self._retry_or_fail(attempt, f"worker lost: {n.reason}")

    def _retry_or_fail(self, attempt: Attempt, reason: str) -> None:
        if attempt.number <= self.res.max_retries:
            attempt.number += 1
            self._pending.appendleft(attempt)
            ledger = self.recorder.ledger(attempt.trial_id)
            how = f"from checkpoint at step {ledger.resume_step}" if ledger.resume is not None else "from scratch"
            self.progress.trial_requeued(attempt.tag, f"retrying (attempt {attempt.number}) {how}")
        else:
            self.recorder.finish(attempt, TrialStatus.FAILED,
                                 error=f"{reason} (gave up after {attempt.number} attempts)")

    # ------------------------------------------------------------------ liveness
    def stall_timeout_s(self, attempt: Attempt) -> float:
        """The spec's ``stall_timeout_s``; else, while the trial trains between evaluations (its
        last event a training heartbeat), 4x the time between its heartbeats; while its last
        heartbeat named a slow set-up step (``preparing data``, ``compiling``), max(1800 s, 5x the
        longest gap between its events); else max(600 s, 5x that gap).

        Until an attempt's first event (the worker starting, importing torch) the limit is at
        least 600 s: set-up has no pace to judge it by yet; nor has an evaluation, which sends
        nothing until it ends.
        """
        if self.res.stall_timeout_s is not None:
            limit = float(self.res.stall_timeout_s)
            return limit if attempt.heard_this_attempt else max(limit, STALL_FLOOR_S)
        if attempt.beat_every_s is not None:
            return BEAT_STALL_FACTOR * attempt.beat_every_s
        floor = SLOW_PHASE_FLOOR_S if attempt.slow_phase is not None else STALL_FLOOR_S
        return max(floor, STALL_PACE_FACTOR * attempt.longest_gap_s)

    def _watch(self, now: float) -> None:
        for worker, attempt in list(self._busy.items()):
            cap = self.res.trial_timeout_s
            if cap is not None and attempt.first_started_mono is not None and now - attempt.first_started_mono >= cap:
                self.backend.kill(worker)
                del self._busy[worker]
                cause = f"timeout: stopped at its {format_duration(cap)} cap (resources.trial_timeout_s)"
                self.recorder.finish(attempt, TrialStatus.TIMEOUT, error=cause)
                continue
            silent, limit = now - attempt.last_event_mono, self.stall_timeout_s(attempt)
            if silent >= limit:
                self.backend.kill(worker)
                del self._busy[worker]
                self.progress.line(attempt.tag, f"stalled: no event for {format_duration(silent)} "
                                   f"(stall timeout {format_duration(limit)}); killed its worker")
                self._retry_or_fail(attempt, f"stalled: no event for {format_duration(silent)}")
            elif silent >= min(SILENT_NOTE_S, limit / 2) and now - attempt.warned_mono >= SILENT_NOTE_S:
                attempt.warned_mono = now
                doing = attempt.slow_phase or "silent"  # a named slow step is not silence
                self.progress.line(attempt.tag, f"{doing} for {format_duration(silent)} "
                                   f"(stall timeout {format_duration(limit)})")

    def _check_hostable(self) -> None:
        reason = self.backend.unhostable()
        if reason is None:
            return
        while self._proposed():  # a search's proposals would wait for a worker forever
            pass
        log.error("%s; the %d trials left are failed", reason, len(self._pending))
        while self._pending:
            attempt = self._pending.popleft()
            self.progress.trial_started(attempt.tag, "no node can host it")
            self.recorder.finish(attempt, TrialStatus.FAILED, error=reason)
        self._shrink()
