"""A search as a :class:`~orchestrator.run.scheduler.Scheduler`: proposals turned into trials as
workers free up, composed with successive halving (or with nothing).

:class:`SearchScheduler` wraps the policy of ``sweep.scheduler`` (:class:`AshaScheduler` or
:class:`RunToEnd`) and adds what a search does: when a worker is free and no trial waits for
one (a promotion goes first), it asks the :class:`~orchestrator.run.tpe.TpeSearch` for a
point, checks it as a sweep point is checked (:class:`~orchestrator.spec.proposals.Proposals`),
writes its record to the job folder, and hands its trials (one per seed) to the dispatcher.
Every pause and end is passed on to the search. While proposals remain, successive halving
counts them as trials still headed for its first rung, so no rung closes before they arrive.

:func:`load_search` rebuilds all of it from the job folder: the records in order, then each
recorded trial's row and evaluations, exactly as the live run told them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from orchestrator.errors import UsageError
from orchestrator.results import ResultsError, ResultsStore
from orchestrator.results.proposals import ProposalRecord, check_study, read_proposals, write_proposal
from orchestrator.run.scheduler import Move, Scheduler
from orchestrator.run.tpe import TpeSearch, values_of
from orchestrator.spec import Trial
from orchestrator.spec.proposals import Proposals
from orchestrator.spec.rungs import asha_rungs
from rnn.events import EvalRecord, TrialStatus

__all__ = ["MAX_WASTED", "SearchScheduler", "load_search"]

log = logging.getLogger(__name__)

#: Proposals refused by validation or repeating an earlier one, in a row, before the search
#: stops proposing (the space is exhausted, or most of it breaks a rule).
MAX_WASTED = 50

#: Stands for the trials not proposed yet when successive halving asks which trials may still
#: arrive at its rungs (a trial it has not seen is headed for the first).
_UNPROPOSED = ""


@dataclass
class SearchScheduler:
    """A search's proposals on top of ``inner``, the policy for the trials once proposed."""

    search: TpeSearch
    proposals: Proposals
    store: ResultsStore
    inner: Scheduler
    wasted: int = 0
    _gave_up: bool = field(default=False, repr=False)

    # --- proposing ----------------------------------------------------------------------------
    def unproposed(self) -> int:
        return 0 if self._gave_up else self.search.remaining * len(self.proposals.seeds)

    def propose(self) -> list[Trial]:
        space = self.proposals.tpe.space
        while self.search.remaining and not self._gave_up:
            number, params, from_model = self.search.ask()
            values = values_of(space, params)
            trials, problems = self.proposals.trials_for(values, self.search.accepted)
            record = ProposalRecord(number, params, values, from_model)
            how = "TPE" if from_model else "start-up draw"
            if problems:
                record = replace(record, refused=f"{problems[0].path}: {problems[0].message}")
                log.warning("proposal %d (%s) refused: %s; the search is told it failed", number, how,
                            record.refused)
            elif (earlier := self._earlier(trials)) is not None:
                record = replace(record, duplicate_of=earlier)
                log.info("proposal %d (%s) repeats proposal %d; the search is told its result", number, how, earlier)
            else:
                record = replace(record, trial_ids=tuple(t.trial_id for t in trials))
            write_proposal(self.store, record)  # durable before any of its trials is handed out
            self.search.add(record)
            if record.accepted:
                self.wasted = 0
                log.info("proposal %d of %d (%s): %s", self.search.accepted, self.proposals.tpe.samples, how,
                         ", ".join(f"{path}={_short(value)}" for path, value in values.items()))
                return trials
            self.wasted += 1
            if self.wasted >= MAX_WASTED:
                self._gave_up = True
                log.error("the search stopped after %d proposals in a row were refused or repeated earlier ones "
                          "(%d of %d made): widen sweep.tpe.space or lower tpe.samples", self.wasted,
                          self.search.accepted, self.proposals.tpe.samples)
        return []

    def _earlier(self, trials: Sequence[Trial]) -> Optional[int]:
        return next((n for t in trials if (n := self.search.owner(t.trial_id)) is not None), None)

    # --- the inner policy, with the search told ------------------------------------------------
    def paused_on_disk(self, trial_id: str) -> Any:
        return self.inner.paused_on_disk(trial_id)

    def pause_at(self, trial_id: str, resume_step: Optional[int]) -> Optional[int]:
        return self.inner.pause_at(trial_id, resume_step)

    def on_paused(self, trial_id: str, step: int, evals: Sequence[EvalRecord]) -> None:
        self.inner.on_paused(trial_id, step, evals)
        self.search.trial_paused(trial_id, evals)

    def decide(self, active: Iterable[str]) -> tuple[list[Move], list[Move]]:
        return self.inner.decide([*active, _UNPROPOSED] if self.unproposed() else active)

    def on_ended(self, trial_id: str, status: TrialStatus, row: Mapping[str, Any],
                 evals: Sequence[EvalRecord]) -> None:
        self.inner.on_ended(trial_id, status, row, evals)
        self.search.trial_ended(trial_id, status, row.get(f"best_{self.search.metric}"), evals)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def rung_steps(sweep: Any) -> tuple[int, ...]:
    """Successive halving's pause steps, or none."""
    asha = sweep.scheduler if sweep is not None else None
    if asha is None or asha.max_steps is None:
        return ()
    return asha_rungs(asha.grace_steps, asha.reduction_factor, asha.max_steps)[:-1]


def load_search(proposals: Proposals, sweep: Any, store: ResultsStore) -> tuple[TpeSearch, list[Trial]]:
    """The search as the job folder left it, and the trials of its accepted proposals (in order).

    Raises:
        UsageError: the folder's proposals were drawn from another ``sweep.tpe``, or the spec
            changed so that a recorded proposal now makes other trials (or is refused).
    """
    search = TpeSearch(proposals.tpe, proposals.metric, rung_steps(sweep))
    try:
        check_study(store, search.study_key())
        records = read_proposals(store)
    except ResultsError as e:
        raise UsageError(str(e)) from e
    trials: list[Trial] = []
    for record in records:
        if record.accepted:
            made, problems = proposals.trials_for(record.values, search.accepted)
            if problems or tuple(t.trial_id for t in made) != record.trial_ids:
                why = problems[0].message if problems else f"trials {[t.trial_id for t in made]}"
                raise UsageError(
                    f"{store.location('search')}: proposal {record.number} ({record.values}) was recorded with "
                    f"trials {list(record.trial_ids)} but this spec makes {why}: the spec changed since the "
                    "search began; use run --fresh (the old results are kept aside) or another name")
            trials += made
        search.add(record)
    _replay(search, store, {t.trial_id for t in trials})
    if records:
        log.info("search: %d proposals found on disk (%d accepted), %d to make", len(records), search.accepted,
                 search.remaining)
    return search, trials


def _replay(search: TpeSearch, store: ResultsStore, ids: set[str]) -> None:
    """Tell the search what the job folder holds of its trials: the rows of ended ones, the
    evaluations of all (paused trials reached their rungs)."""
    if not ids:
        return
    rows, evals = store.read_histories(ids)
    for tid, row in rows.items():
        status = str(row["status"])  # every trials row has one
        if status == TrialStatus.PAUSED.value or status == TrialStatus.FAILED.value:
            search.trial_paused(tid, evals.get(tid, ()))  # a failed trial runs again: not ended yet
        else:
            search.trial_ended(tid, status, row.get(f"best_{search.metric}"), evals.get(tid, ()))
