"""What the dispatcher knows of one trial on its way through the pool: :class:`Attempt`.

Its attempt number, when it started, when it was last heard from, how long it has waited at a
rung. Only the dispatcher writes it; the recorder reads it to fill the trial's row (attempts,
start time, running time). What the trial has produced (evaluations, checkpoints, its row) is
the recorder's (:class:`orchestrator.run.recorder.Ledger`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Optional

from orchestrator.run.progress import trial_label
from orchestrator.spec import Trial


@dataclass
class Attempt:
    """One trial's attempts, timing and liveness in this invocation."""

    trial: Trial
    tag: str  # how the progress log names it: "3/12 <id> <swept values>"
    number: int = 1
    started_at: Optional[datetime] = None  # first start in this invocation (wall clock)
    first_started_mono: Optional[float] = None
    attempt_started_mono: float = 0.0
    last_event_mono: float = 0.0
    heard_this_attempt: bool = False
    longest_gap_s: float = 0.0
    warned_mono: float = 0.0
    paused_mono: Optional[float] = None  # when it paused: waiting at a rung is not running time
    #: While it trains between evaluations: the seconds expected between its heartbeats (the
    #: heartbeat period, or one step where a step takes longer). None in any other phase (set-up,
    #: compile, evaluation), which has no pace to judge it by.
    beat_every_s: Optional[float] = None
    #: The slow set-up step its last heartbeat named (``preparing data``, ``compiling``), or None.
    slow_phase: Optional[str] = None

    @classmethod
    def of(cls, trial: Trial, total: int) -> Attempt:
        label = trial_label(trial.overrides)
        return cls(trial=trial, tag=f"{trial.index + 1}/{total} {trial.trial_id} {label}".strip())

    @property
    def trial_id(self) -> str:
        return self.trial.trial_id

    def launched(self, now: float) -> None:
        """Handed to a worker: a new attempt's clock starts (the trial's, at its first)."""
        self.attempt_started_mono = self.last_event_mono = now
        self.heard_this_attempt = False
        self.beat_every_s = None
        self.slow_phase = None
        self.first_started_mono = self.first_started_mono or now
        self.started_at = self.started_at or datetime.now(timezone.utc)

    def heard(self, now: float, beat_every_s: Optional[float] = None, slow_phase: Optional[str] = None) -> None:
        """An event arrived: the gap since the last one sets the pace a stall is judged by.
        ``beat_every_s``: it was a training heartbeat, and the next is due within that."""
        if self.last_event_mono:
            self.longest_gap_s = max(self.longest_gap_s, now - self.last_event_mono)
        self.last_event_mono = now
        self.heard_this_attempt = True
        self.beat_every_s = beat_every_s
        self.slow_phase = slow_phase

    def paused(self, now: float) -> None:
        self.paused_mono = now

    def resumed(self, now: float) -> None:
        """Promoted from a rung: the wait there does not count against ``trial_timeout_s``."""
        if self.first_started_mono is not None and self.paused_mono is not None:
            self.first_started_mono += now - self.paused_mono
        self.paused_mono = None

    def running_s(self) -> float:
        """Running time so far; a trial waiting at a rung stopped running when it paused."""
        ended = self.paused_mono if self.paused_mono is not None else time.monotonic()
        return ended - (self.first_started_mono or ended)
