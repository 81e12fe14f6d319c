"""What the running trials are doing now, for the live report: their latest heartbeat and evaluation.

The recorder updates the :class:`Board` on the dispatcher's thread as events arrive; the live
report's thread takes a :meth:`Board.snapshot`. Heartbeats go here and into the progress log only:
the job folder and the trackers get evaluations, so nothing a heartbeat says is written twice.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class RunningTrial:
    """One running trial as the live report shows it (``heard_at``: epoch seconds of its last event)."""

    trial_id: str
    label: str
    step: int = 0
    total: Optional[int] = None
    phase: str = "starting"
    train_loss: Optional[float] = None
    val_loss: Optional[float] = None
    steps_per_s: Optional[float] = None
    eta_s: Optional[float] = None
    heard_at: float = 0.0


class Board:
    """The running trials by id, behind a lock; ``version`` changes with every update."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._trials: dict[str, RunningTrial] = {}
        self._version = 0

    def update(self, trial_id: str, label: str, **fields: Any) -> None:
        with self._lock:
            current = self._trials.get(trial_id) or RunningTrial(trial_id, label)
            self._trials[trial_id] = dataclasses.replace(current, label=label, heard_at=time.time(), **fields)
            self._version += 1

    def remove(self, trial_id: str) -> None:
        with self._lock:
            if self._trials.pop(trial_id, None) is not None:
                self._version += 1

    def snapshot(self) -> tuple[int, list[RunningTrial]]:
        """(version, the running trials in the order they started)."""
        with self._lock:
            return self._version, list(self._trials.values())
