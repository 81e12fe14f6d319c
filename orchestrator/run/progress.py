"""One clear progress line per event, the same in a terminal and in ``ray job logs``."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Optional

from orchestrator.durations import format_duration

log = logging.getLogger("orchestrator.run.progress")


def trial_label(overrides: dict[str, Any]) -> str:
    """``model.cell=gru seed=1`` from a trial's swept values."""
    parts = []
    for path, value in overrides.items():
        key = "seed" if path == "train.seed" else path
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class Progress:
    """Counts trials and writes progress lines through ``logging``."""

    def __init__(self, total: int, slots: int) -> None:
        self.total = total
        self.slots = max(1, slots)
        self.done = 0
        self.failed = 0
        self.running = 0
        self._duration_sum = 0.0  # a sum and a count, not a list: flat at 10,000 trials
        self._started = time.monotonic()

    def line(self, tag: str, message: str) -> None:
        log.info("[%s] %s", tag, message)

    def trial_started(self, tag: str, message: str) -> None:
        self.running += 1
        self.line(tag, message)

    def trial_requeued(self, tag: str, message: str) -> None:
        self.running -= 1
        self.line(tag, message)

    def trial_paused(self, tag: str, message: str) -> None:
        """A trial stopped at a successive-halving rung: not running, not done."""
        self.running -= 1
        self.line(tag, message)

    def trial_finished(self, tag: str, message: str, duration_s: float, ok: bool, running: bool = True) -> None:
        if running:
            self.running -= 1
        self.done += 1
        self.failed += 0 if ok else 1
        self._duration_sum += duration_s
        self.line(tag, message)
        self.summary()

    def eta_s(self) -> Optional[float]:
        if not self.done:
            return None
        remaining = self.total - self.done
        mean = self._duration_sum / self.done
        return mean * math.ceil(remaining / self.slots)

    def summary(self) -> None:
        eta = format_duration(self.eta_s()) if self.done < self.total else "0s"
        log.info(
            "progress: %d/%d done, %d running, %d failed, elapsed %s, ETA %s",
            self.done,
            self.total,
            self.running,
            self.failed,
            format_duration(time.monotonic() - self._started),
            eta,
        )
