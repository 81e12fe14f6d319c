"""Scheduler policies: where a trial pauses, and what becomes of a paused trial.

The dispatcher (:mod:`orchestrator.run.dispatch`) asks a :class:`Scheduler` these things and
knows nothing else of it:

- :meth:`~Scheduler.pause_at`: as a trial is handed to a worker, the step it stops at (None:
  it runs to its end);
- :meth:`~Scheduler.on_paused`: a trial stopped there, with its evaluations so far;
- :meth:`~Scheduler.decide`: which paused trials go on (promoted: resumed ahead of trials not
  started) and which end (pruned), given the trials still pending or running;
- :meth:`~Scheduler.unproposed` and :meth:`~Scheduler.propose`: how many trials it may still
  add, and the next ones, asked when a worker is free and no trial is waiting for one;
- :meth:`~Scheduler.on_ended`: a trial ended (its committed row and evaluations).

:class:`RunToEnd` is the policy without a scheduler; :class:`AshaScheduler` holds successive
halving (its rung arithmetic is :mod:`orchestrator.run.asha`). Neither proposes trials: a
search that proposes them from the results so far (``sweep.tpe``,
:class:`orchestrator.run.search.SearchScheduler`) wraps one of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from orchestrator.run.asha import Asha, load_asha
from orchestrator.spec import Trial
from rnn.events import EvalRecord, TrainResult, TrialStatus

__all__ = ["AshaScheduler", "Move", "RunToEnd", "Scheduler", "load_scheduler"]


@dataclass(frozen=True)
class Move:
    """A paused trial the scheduler promoted or pruned, and why (one line for the log and the row)."""

    trial_id: str
    why: str


class Scheduler(Protocol):
    """The policy the dispatcher consults about pausing trials."""

    def paused_on_disk(self, trial_id: str) -> Optional[TrainResult]:
        """The committed result of a trial an earlier run left paused, or None (asked once per trial)."""

    def pause_at(self, trial_id: str, resume_step: Optional[int]) -> Optional[int]:
        """The step where ``trial_id``, about to resume at ``resume_step`` (None: from scratch), stops."""

    def on_paused(self, trial_id: str, step: int, evals: Sequence[EvalRecord]) -> None:
        """``trial_id`` paused at ``step``; ``evals`` are all its evaluations so far."""

    def decide(self, active: Iterable[str]) -> tuple[list[Move], list[Move]]:
        """(promoted, pruned) among the paused trials, given the trials pending or running."""

    def unproposed(self) -> int:
        """Trials this policy may still add to the sweep (0: every trial is known already)."""

    def propose(self) -> list[Trial]:
        """The next trials to run (a proposal's, one per seed), or none (nothing more to propose)."""

    def on_ended(self, trial_id: str, status: TrialStatus, row: Mapping[str, Any],
                 evals: Sequence[EvalRecord]) -> None:
        """``trial_id`` ended (any terminal status; its row and evaluations as committed)."""


class _Fixed:
    """The part of a policy whose trials are all known up front."""

    def unproposed(self) -> int:
        return 0

    def propose(self) -> list[Trial]:
        return []

    def on_ended(self, trial_id: str, status: TrialStatus, row: Mapping[str, Any],
                 evals: Sequence[EvalRecord]) -> None:
        pass


class RunToEnd(_Fixed):
    """No scheduler: every trial runs to its end, none pauses."""

    def paused_on_disk(self, trial_id: str) -> Optional[TrainResult]:
        return None

    def pause_at(self, trial_id: str, resume_step: Optional[int]) -> Optional[int]:
        return None

    def on_paused(self, trial_id: str, step: int, evals: Sequence[EvalRecord]) -> None:
        raise AssertionError(f"trial {trial_id} paused at step {step} without a scheduler")

    def decide(self, active: Iterable[str]) -> tuple[list[Move], list[Move]]:
        return [], []


@dataclass
class AshaScheduler(_Fixed):
    """Successive halving with promotion as a :class:`Scheduler` (see :mod:`orchestrator.run.asha`).

    Keeps the rung each trial is headed for: set as it is handed out, raised when it is
    promoted; a trial not handed out yet is headed for the first rung.
    """

    asha: Asha
    targets: dict[str, int] = field(default_factory=dict)

    def paused_on_disk(self, trial_id: str) -> Optional[TrainResult]:
        return self.asha.restored.pop(trial_id, None)

    def pause_at(self, trial_id: str, resume_step: Optional[int]) -> Optional[int]:
        target = self.targets[trial_id] = self.asha.target_for(resume_step)
        return self.asha.pause_step(target)

    def on_paused(self, trial_id: str, step: int, evals: Sequence[EvalRecord]) -> None:
        steps = self.asha.pause_steps
        rung = steps.index(step) if step in steps else self.targets.get(trial_id, 0)
        self.asha.record(trial_id, rung, self.asha.value_of(evals, step))

    def decide(self, active: Iterable[str]) -> tuple[list[Move], list[Move]]:
        asha = self.asha
        if not asha.paused:
            return [], []
        promote, prune = asha.decide([self.targets.get(tid, 0) for tid in active])
        for d in promote:
            self.targets[d.trial_id] = d.rung + 1
        return (
            [Move(d.trial_id, f"promoted from rung {asha.pause_steps[d.rung]} ({asha.metric} {d.value:.4f}, "
                              f"rank {d.rank} of {d.recorded})") for d in promote],
            [Move(d.trial_id, f"at rung {asha.pause_steps[d.rung]}, {asha.metric} {d.value:.4f} ranked "
                              f"{d.rank} of {d.recorded}") for d in prune],
        )


def load_scheduler(scheduler: Any, trials: Sequence[Any], store: Any) -> Scheduler:
    """The policy of ``sweep.scheduler`` (None: :class:`RunToEnd`), its state restored from ``store``."""
    if scheduler is None:
        return RunToEnd()
    return AshaScheduler(load_asha(scheduler, trials, store))
