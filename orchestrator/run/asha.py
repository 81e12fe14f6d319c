"""Asynchronous successive halving with promotion (ASHA, Li et al. 2018), for a finite sweep.

Rungs sit at ``grace_steps * rf**k`` training steps below ``max_steps`` (``rf`` is the
reduction factor). A trial runs to its next rung and pauses there (the engine writes a resume
checkpoint); the value of the metric at that step is *recorded* at the rung. Each time the
dispatcher looks (:meth:`Asha.decide`), from the lowest rung up:

- **Promote** (the paper's ``get_job``): a paused trial is promoted as soon as it is in the top
  ``floor(n / rf)`` of the ``n`` trials recorded at its rung so far. Promoted means resumed, on
  any free worker, from its resume checkpoint, with the next rung as its pause point (the
  last rung is ``max_steps``: there it completes). Promotions go ahead of trials not started.
  A trial promoted early stays promoted when better ones arrive later, so asynchronous
  halving spends somewhat more than synchronous halving's ``n / rf`` per rung
  (``spec.rungs.budget_steps``); the worst arrival order (each newcomer better than all
  before) promotes ``n - rf + 1`` (``spec.rungs.worst_budget_steps``). A cap at synchronous
  counts was tried and dropped: a trial arriving after a rung's cap is spent could not be
  promoted however good, so the arrival order could pick the winner.
- **Close and prune.** Rung ``k`` is *closed* when no trial can still arrive there: every
  rung below is closed and no trial pending or running is headed for rung ``k`` or below.
  A closed rung promotes its best paused trials within the top ``max(1, floor(n / rf))``, so
  the best trial always reaches ``max_steps``, and every other trial paused there is
  **pruned**: terminal, keeping its curve and best checkpoint. When nothing is pending or
  running every rung is closed, so the sweep never ends with paused trials and idle workers.

Everything here is driver-side bookkeeping; durability is the job folder's: a paused trial is
a part with status ``paused`` and its resume checkpoint ``checkpoints/<id>/last.pt``, so after
a driver kill :func:`restore` rebuilds the rungs from the evaluations and rows on disk. A
promotion that was in flight when the driver died is decided again from that state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from orchestrator.spec.rungs import asha_rungs, budget_steps, promotion_caps, worst_budget_steps
from rnn.events import EvalRecord, TrainResult, TrialStatus

__all__ = ["Asha", "Decision", "budget_steps", "load_asha", "promotion_caps", "restore", "worst_budget_steps"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Decision:
    """A trial the scheduler moved: promoted from, or pruned at, pause rung ``rung``."""

    trial_id: str
    rung: int
    value: float
    rank: int  # 1-based, among the trials recorded at the rung
    recorded: int


@dataclass
class Asha:
    """The rungs of one sweep and what has been recorded at them.

    Args:
        rungs: the rung steps, the last being ``max_steps`` (``orchestrator.spec.rungs.asha_rungs``).
        reduction_factor: ``rf``; the top ``1/rf`` of a rung is promoted.
        metric: the evaluation field ranked, lower is better (``val_loss`` or ``val_bpc``).
        n_trials: the sweep's size (the trials that may arrive at the first rung).
    """

    rungs: tuple[int, ...]
    reduction_factor: int
    metric: str
    n_trials: int
    records: list[dict[str, float]] = field(default_factory=list)  # per pause rung: trial -> value
    promoted: list[set[str]] = field(default_factory=list)  # per pause rung: trials that left it upwards
    paused: dict[str, int] = field(default_factory=dict)  # trial -> the pause rung it waits at
    #: Paused trials found on disk by :func:`restore`: their results as committed.
    restored: dict[str, TrainResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.pause_steps)
        self.records = self.records or [{} for _ in range(k)]
        self.promoted = self.promoted or [set() for _ in range(k)]

    @property
    def pause_steps(self) -> tuple[int, ...]:
        """The rungs a trial pauses at (all but ``max_steps``)."""
        return self.rungs[:-1]

    def target_for(self, resume_step: Optional[int]) -> int:
        """The pause rung a trial resumed at ``resume_step`` (None: from scratch) runs to next;
        ``len(pause_steps)`` means it runs to the end."""
        done = resume_step or 0
        return next((k for k, step in enumerate(self.pause_steps) if step > done), len(self.pause_steps))

    def pause_step(self, target: int) -> Optional[int]:
        """Where a trial headed for rung ``target`` stops, or None (it runs to the end)."""
        return self.pause_steps[target] if target < len(self.pause_steps) else None

    def value_of(self, evals: Iterable[EvalRecord], step: int) -> float:
        """The metric at ``step`` (the rung's evaluation); a non-finite or missing one ranks last."""
        value = next((getattr(r, self.metric) for r in evals if r.step == step), None)
        return float(value) if value is not None and math.isfinite(value) else math.inf

    def record(self, trial_id: str, rung: int, value: float) -> None:
        """``trial_id`` paused at pause rung ``rung`` with ``value``: it waits for a decision."""
        self.records[rung][trial_id] = value
        self.paused[trial_id] = rung
        self.promoted[rung].discard(trial_id)  # back at this rung (a rerun from an older checkpoint)

    def _ranked(self, rung: int) -> list[str]:
        return sorted(self.records[rung], key=lambda tid: (self.records[rung][tid], tid))

    def decide(self, active_targets: Iterable[int]) -> tuple[list[Decision], list[Decision]]:
        """Promotions and prunings now possible, lowest rung first.

        ``active_targets``: the rung each trial pending or running is headed for (a trial not
        started yet counts as headed for rung 0). The promoted and pruned trials leave
        ``paused``; the caller resumes (promotions) or finishes (prunings) them.
        """
        lowest_active = min(active_targets, default=math.inf)
        promote: list[Decision] = []
        prune: list[Decision] = []
        below_closed = True
        for k in range(len(self.pause_steps)):
            ranked = self._ranked(k)
            n = len(ranked)
            closed = below_closed and lowest_active > k
            quota = max(1, n // self.reduction_factor) if closed else n // self.reduction_factor
            for rank, tid in enumerate(ranked[:quota], start=1):
                if self.paused.get(tid) == k:
                    del self.paused[tid]
                    self.promoted[k].add(tid)
                    promote.append(Decision(tid, k, self.records[k][tid], rank, n))
                    lowest_active = min(lowest_active, k + 1)
            if closed:
                for rank, tid in enumerate(ranked, start=1):
                    if self.paused.get(tid) == k:
                        del self.paused[tid]
                        prune.append(Decision(tid, k, self.records[k][tid], rank, n))
            below_closed = closed
        return promote, prune


def restore(
    asha: Asha,
    trial_ids: Iterable[str],
    rows: Mapping[str, Mapping[str, Any]],
    evals: Mapping[str, Sequence[EvalRecord]],
) -> Asha:
    """Rebuild the rungs from what the job folder holds (after a driver kill, or a rerun).

    ``rows``: the trials table (union of parts) by trial id; ``evals``: each trial's evaluations.
    A trial's evaluation at a rung step is its record there; it left the rung upwards when its
    row went past that step; a row with status ``paused`` waits at the rung it stopped at.
    Only ``trial_ids`` (this job's trials) are read.
    """
    for tid in trial_ids:
        row, history = rows.get(tid), evals.get(tid, ())
        if row is None:
            continue
        steps = int(row.get("steps") or 0)
        for k, step in enumerate(asha.pause_steps):
            if step > steps or not any(r.step == step for r in history):
                continue
            asha.records[k][tid] = asha.value_of(history, step)
            if steps > step:
                asha.promoted[k].add(tid)
        if row.get("status") == TrialStatus.PAUSED.value and steps in asha.pause_steps:
            asha.paused[tid] = asha.pause_steps.index(steps)
            asha.restored[tid] = paused_result(row, history)
    if asha.paused:
        log.info("successive halving: %d paused trials found on disk, at rungs %s", len(asha.paused),
                 sorted({asha.pause_steps[k] for k in asha.paused.values()}))
    return asha


def paused_result(row: Mapping[str, Any], evals: Sequence[EvalRecord]) -> TrainResult:
    """The engine result a committed ``paused`` row stands for (to commit it again as ``pruned``)."""
    def get(name: str) -> Any:
        return row.get(name)

    return TrainResult(
        status=TrialStatus.PAUSED,
        steps=int(get("steps") or 0),
        params=int(get("params") or 0),
        device=str(get("device") or ""),
        precision=str(get("precision") or ""),
        train_time_s=float(get("train_time_s") or 0.0),
        eval_time_s=get("eval_time_s"),
        best_val_loss=get("best_val_loss"),
        best_val_bpc=get("best_val_bpc"),
        best_val_accuracy=get("best_val_accuracy"),
        best_step=get("best_step"),
        best_checkpoint=get("checkpoint"),
        corpus_sha256=get("corpus_sha256"),
        vocab_size=get("vocab_size"),
        error=None,
        evals=tuple(sorted(evals, key=lambda r: r.step)),
    )


def load_asha(scheduler: Any, trials: Sequence[Any], store: Any) -> Asha:
    """The ASHA state of a job: its rungs from ``sweep.scheduler`` (an ``AshaSpec`` with
    ``max_steps`` filled in by ``load_job``), what ``store`` holds restored (:func:`restore`)."""
    asha = Asha(asha_rungs(scheduler.grace_steps, scheduler.reduction_factor, scheduler.max_steps),
                scheduler.reduction_factor, scheduler.metric, len(trials))
    rows, evals = store.read_histories(t.trial_id for t in trials)
    if not rows:
        return asha
    return restore(asha, [t.trial_id for t in trials], rows, evals)
