"""TPE proposals (Optuna's ``TPESampler``) from what the trials so far have shown.

The study is never kept between proposals. Before each one, an in-memory Optuna study is built
from the proposal records (:class:`~orchestrator.results.proposals.ProposalRecord`) and what
their trials have done, a ``TPESampler`` seeded for that proposal's number is asked for the
next point, and the study is dropped. A driver killed and run again reads the same records
and trial rows back from the job folder, so it makes the proposals an uninterrupted run would
have made from the same finished trials: the live path and the replay are the same code.

What the study is told of a proposal (each proposal runs once per seed):

- its trials not all ended, but all past a rung of successive halving (paused there, or
  promoted and running on): ``PRUNED`` at the metric of the last rung all of them reached,
  which is how TPE ranks a trial stopped early (the further rung first, then the value). This
  is a snapshot, never a final word: the next study shows whatever the trial has done by then.
  Without it TPE could learn nothing before a trial ran to ``max_steps``, and every proposal
  until then would be a start-up draw;
- its trials not all ended, one without a rung yet (pending or running): ``RUNNING`` (the
  sampler's constant liar counts it as no better than the worst so far);
- all its trials ended ``completed`` or ``early_stopped``: ``COMPLETE``, the mean of their best
  ``metric``;
- one ``pruned`` by successive halving or ``diverged``: ``PRUNED`` (TPE ranks a pruned trial by
  its last rung value; a divergence with none, last);
- one ``failed``, ``oom`` or ``timeout``, or a proposal that validation refused: ``FAIL``
  (ignored by the sampler);
- a proposal that repeats an earlier one: what that one is.
"""

from __future__ import annotations

import logging
import math
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from orchestrator.results.proposals import ProposalRecord
from orchestrator.spec.sweep import ChoiceDist, IntDist, LogUniformDist, TpeSpec, UniformDist
from rnn.events import EvalRecord, TrialStatus

__all__ = ["TpeSearch", "distributions", "values_of"]

log = logging.getLogger(__name__)

_COMPLETE = {TrialStatus.COMPLETED.value, TrialStatus.EARLY_STOPPED.value}
_PRUNED = {TrialStatus.PRUNED.value, TrialStatus.DIVERGED.value}


def distributions(space: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """Optuna's distribution for each path of a ``tpe.space`` (a choice by the index of its value,
    so any YAML value can be a choice)."""
    out: dict[str, BaseDistribution] = {}
    for path, dist in space.items():
        if isinstance(dist, LogUniformDist):
            out[path] = FloatDistribution(dist.low, dist.high, log=True)
        elif isinstance(dist, UniformDist):
            out[path] = FloatDistribution(dist.low, dist.high)
        elif isinstance(dist, IntDist):
            out[path] = IntDistribution(dist.low, dist.high)
        elif isinstance(dist, ChoiceDist):
            out[path] = CategoricalDistribution(tuple(range(len(dist.values))))
        else:
            raise TypeError(f"unknown distribution {dist!r}")
    return out


def values_of(space: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """What a proposal sets, dotted path -> value, from the sampler's parameters."""
    return {path: (dist.values[params[path]] if isinstance(dist, ChoiceDist) else params[path])
            for path, dist in space.items()}


def _sampler_seed(seed: int, number: int) -> int:
    """The sampler's seed for proposal ``number``: a function of the spec's seed and the number only."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


@dataclass
class _TrialSoFar:
    status: Optional[str] = None  # its terminal status; None while pending, running or paused
    value: Optional[float] = None  # its best ``metric``, once ended
    rungs: dict[int, float] = field(default_factory=dict)  # the metric at each rung step it reached


class TpeSearch:
    """The proposals of one ``sweep.tpe`` and what their trials have shown.

    Args:
        tpe: the ``sweep.tpe`` section.
        metric: the evaluation field minimised (``val_loss`` or ``val_bpc``).
        rung_steps: successive halving's pause steps (empty without it): the metric there is
            reported to the study as intermediate values.
    """

    def __init__(self, tpe: TpeSpec, metric: str, rung_steps: Sequence[int] = ()) -> None:
        self.tpe = tpe
        self.metric = metric
        self.rung_steps = tuple(rung_steps)
        self.records: list[ProposalRecord] = []
        self._accepted = 0  # of the records, those with trials of their own (asked every dispatch turn)
        self._dists = distributions(tpe.space)
        self._trials: dict[str, _TrialSoFar] = {}
        self._owner: dict[str, int] = {}  # trial id -> its proposal's number

    # --- what has been proposed ----------------------------------------------------------------
    def study_key(self) -> dict[str, Any]:
        """What the proposals are drawn from (all of ``sweep.tpe`` but ``samples``), as plain JSON."""
        return {"sampler": "tpe", "seed": self.tpe.seed, "startup": self.tpe.startup, "metric": self.metric,
                "space": {path: dist.model_dump() for path, dist in self.tpe.space.items()}}

    @property
    def accepted(self) -> int:
        """Proposals that made trials of their own."""
        return self._accepted

    @property
    def remaining(self) -> int:
        """Proposals still to make."""
        return max(0, self.tpe.samples - self.accepted)

    def owner(self, trial_id: str) -> Optional[int]:
        """The number of the proposal whose trial this is."""
        return self._owner.get(trial_id)

    def add(self, record: ProposalRecord) -> None:
        """A proposal was made (and recorded in the job folder)."""
        if record.number != len(self.records):
            raise ValueError(f"proposal {record.number} out of order (expected {len(self.records)})")
        self.records.append(record)
        self._accepted += record.accepted
        for tid in record.trial_ids:
            self._owner[tid] = record.number
            self._trials.setdefault(tid, _TrialSoFar())

    # --- what the trials have shown ------------------------------------------------------------
    def trial_paused(self, trial_id: str, evals: Iterable[EvalRecord]) -> None:
        """A trial paused at a rung: the metric at the rungs it reached."""
        self._rungs(trial_id, evals)

    def trial_ended(self, trial_id: str, status: str, value: Optional[float], evals: Iterable[EvalRecord]) -> None:
        """A trial ended with ``status`` (terminal) and ``value``, its best ``metric`` (None: none)."""
        if trial_id not in self._trials:
            return
        so_far = self._rungs(trial_id, evals)
        so_far.status = str(getattr(status, "value", status))
        so_far.value = value if value is not None and math.isfinite(value) else None

    def _rungs(self, trial_id: str, evals: Iterable[EvalRecord]) -> _TrialSoFar:
        so_far = self._trials.setdefault(trial_id, _TrialSoFar())
        for r in evals:
            value = getattr(r, self.metric)
            if r.step in self.rung_steps and value is not None and math.isfinite(value):
                so_far.rungs[r.step] = float(value)
        return so_far

    # --- the study --------------------------------------------------------------------------------
    def frozen(self, record: ProposalRecord) -> FrozenTrial:
        """The proposal as the study is told it (see the module docstring)."""
        if record.duplicate_of is not None:
            state, value, rungs = self._outcome(self.records[record.duplicate_of])
        else:
            state, value, rungs = self._outcome(record)
        return create_trial(state=state, value=value, params=dict(record.params), distributions=self._dists,
                            intermediate_values=rungs)

    def _outcome(self, record: ProposalRecord) -> tuple[TrialState, Optional[float], dict[int, float]]:
        if not record.accepted:
            return TrialState.FAIL, None, {}
        trials = [self._trials[tid] for tid in record.trial_ids]
        shared = set.intersection(*(set(t.rungs) for t in trials))
        rungs = {step: statistics.fmean(t.rungs[step] for t in trials) for step in sorted(shared)}
        statuses = {t.status for t in trials}
        if None in statuses:
            return (TrialState.PRUNED if rungs else TrialState.RUNNING), None, rungs
        if statuses - _COMPLETE - _PRUNED:
            return TrialState.FAIL, None, {}
        if statuses & _PRUNED:
            return TrialState.PRUNED, None, rungs
        values = [t.value for t in trials]
        if any(v is None for v in values):
            return TrialState.FAIL, None, {}
        return TrialState.COMPLETE, statistics.fmean(v for v in values if v is not None), rungs

    def study(self, sampler: Optional[optuna.samplers.BaseSampler] = None) -> optuna.Study:
        """An in-memory study told every proposal so far."""
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial told
        study = optuna.create_study(direction="minimize", sampler=sampler)
        study.add_trials([self.frozen(r) for r in self.records])
        return study

    def ask(self) -> tuple[int, dict[str, Any], bool]:
        """The next proposal: its number, the sampler's parameters, and whether the sampler's
        model chose it (False: a start-up draw, while fewer than ``startup`` proposals have ended)."""
        number = len(self.records)
        sampler = optuna.samplers.TPESampler(n_startup_trials=self.tpe.startup, multivariate=True,
                                             constant_liar=True, seed=_sampler_seed(self.tpe.seed, number))
        study = self.study(sampler)
        ended = sum(1 for t in study.get_trials(deepcopy=False)
                    if t.state in (TrialState.COMPLETE, TrialState.PRUNED))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = study.ask(self._dists)
        assert trial.number == number, (trial.number, number)
        return number, dict(trial.params), ended >= self.tpe.startup
