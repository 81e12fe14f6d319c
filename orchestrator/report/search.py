"""The search's history, for a ``sweep.tpe`` job: each proposal's metric in the order it was
proposed, the random start-up draws apart from the proposals TPE's model chose, and the best so far.

Read from ``search/`` (:mod:`orchestrator.results.proposals`) and the trials' rows; a job folder
without ``search/study.json`` gets no section. Only a proposal whose every seed ran the full
budget (completed or early-stopped) counts towards the best so far: a pruned one's metric is
from a shorter budget, so it is shown, hollow, but never compared as if it were final.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from orchestrator.report import plots
from orchestrator.report.blocks import Block, Figure, Heading, Para, Table, fmt_num
from orchestrator.results import SUCCESS_STATUSES, ResultsError, ResultsStore
from orchestrator.results.proposals import ProposalRecord, read_proposals, read_study
from rnn.events import TrialStatus

__all__ = ["ProposalOutcome", "outcomes", "search_section"]

_ORIGIN = {False: "start-up draw", True: "TPE"}
#: A proposal's status is the first of these any of its seeds has (worst first); then
#: "not finished" for a seed without a row yet; else it ran the full budget.
_WORST_FIRST = (TrialStatus.FAILED, TrialStatus.OOM, TrialStatus.TIMEOUT, TrialStatus.DIVERGED,
                TrialStatus.PRUNED, TrialStatus.PAUSED)
_WORDS = {TrialStatus.OOM: "out of memory", TrialStatus.TIMEOUT: "timed out",
          TrialStatus.EARLY_STOPPED: "early stopped"}
#: Statuses whose step says something (where the trial stopped).
_AT_STEP = {TrialStatus.DIVERGED, TrialStatus.PRUNED, TrialStatus.PAUSED, TrialStatus.EARLY_STOPPED}


@dataclass(frozen=True)
class ProposalOutcome:
    """What became of one accepted proposal."""

    order: int  # 1, 2, ... over the accepted proposals, as proposed (the plot's x)
    record: ProposalRecord
    status: str  # "completed", "pruned at step 20", "not finished", ...
    value: float  # the mean over its seeds of best_<metric> (NaN when none has one)
    full_budget: bool  # every seed completed or early-stopped, with a finite metric
    running_best: float  # the best full-budget value of proposals 1..order (NaN before there is one)
    ended: bool = True  # every seed has a row, none paused (False while a live search runs it)


def _status(rows: Sequence[Mapping[str, Any]], seeds: int) -> str:
    """One proposal's status from its seeds' rows (``seeds`` trials, some maybe without a row)."""
    for status in (*_WORST_FIRST, None, TrialStatus.EARLY_STOPPED, TrialStatus.COMPLETED):
        if status is None:
            if len(rows) < seeds:
                of = f" ({seeds - len(rows)} of {seeds} seeds)" if rows else ""
                return "not finished" + of
            continue
        hit = [r for r in rows if r["status"] == status]
        if not hit:
            continue
        text = _WORDS.get(status, status.value)
        if status in _AT_STEP:
            steps = sorted({r["steps"] for r in hit if r.get("steps") is not None})
            if steps:
                text += f" at step{'s' if len(steps) > 1 else ''} " + ", ".join(str(s) for s in steps)
        if len(hit) < seeds:
            text += f" ({len(hit)} of {seeds} seeds)"
        return text
    return "—"


def outcomes(records: Sequence[ProposalRecord], rows: Mapping[str, Mapping[str, Any]],
             col: str) -> list[ProposalOutcome]:
    """The accepted proposals in the order proposed, with their status, ``col`` (``best_val_loss``,
    say) and the running best. ``rows``: trial id -> its trials row (a trial without one has not
    finished yet)."""
    out: list[ProposalOutcome] = []
    best = math.nan
    for record in (r for r in records if r.accepted):
        found = [rows[t] for t in record.trial_ids if t in rows]
        values = [v for r in found if (v := r.get(col)) is not None and math.isfinite(v)]
        value = sum(values) / len(values) if values else math.nan
        full = (len(found) == len(record.trial_ids) and len(values) == len(found)
                and all(r["status"] in SUCCESS_STATUSES for r in found))
        if full and not value >= best:  # also when best is NaN: the first full-budget proposal
            best = value
        ended = len(found) == len(record.trial_ids) and all(r["status"] != TrialStatus.PAUSED for r in found)
        out.append(ProposalOutcome(len(out) + 1, record, _status(found, len(record.trial_ids)), value, full, best,
                                   ended))
    return out


def _value(v: Any) -> str:
    """A swept value: floats to 4 significant digits (a draw's 0.02586552182709658 reads 0.02587)."""
    return format(v, ".4g") if isinstance(v, float) else fmt_num(v, "")


def _metric(v: float) -> str:
    """A metric cell: "—" for none yet (a proposal still running, or one that failed)."""
    return fmt_num(v) if math.isfinite(v) else "—"


def _ran(group: Sequence[ProposalOutcome]) -> str:
    """"ran to the full budget", or while some are still running "has run to the full budget yet"."""
    return "ran to the full budget" if all(o.ended for o in group) else "has run to the full budget yet"


def _summary(outs: Sequence[ProposalOutcome], metric: str) -> str:
    """The best start-up draw and the best of TPE's proposals, as numbers; nothing inferred."""

    def best(group: list[ProposalOutcome]) -> Optional[ProposalOutcome]:
        full = [o for o in group if o.full_budget]
        return min(full, key=lambda o: o.value) if full else None

    startup = [o for o in outs if not o.record.from_model]
    model = [o for o in outs if o.record.from_model]
    parts = []
    for group, one, many in ((startup, "the 1 start-up draw", "the {k} start-up draws"),
                             (model, "TPE's 1 proposal", "TPE's {k} proposals")):
        if not group:
            continue
        name = one if len(group) == 1 else many.format(k=len(group))
        b = best(group)
        parts.append(f"the best of {name} had {metric} {b.value:.4f} (proposal {b.order})" if b else
                     f"none of {name} {_ran(group)}")
    if not model:
        parts.append("no proposal has come from TPE's model yet")
    text = "; ".join(parts)
    return text[0].upper() + text[1:] + "."


def search_section(store: ResultsStore, rows: Sequence[Mapping[str, Any]]) -> list[Block]:
    """"Search history" for a job with a search (``search/study.json``); nothing for any other job.

    ``rows``: the trials table's rows (a live job's may lack the trials still running)."""
    try:
        study = read_study(store)
        if study is None:
            return []
        records = read_proposals(store)
    except ResultsError as e:  # a damaged record must not cost the rest of the report
        return [Heading(2, "Search history"), Para(f"The search's records could not be read: {e}")]
    blocks: list[Block] = [Heading(2, "Search history")]
    metric = str(study.get("metric") or "val_loss")
    col = f"best_{metric}"
    outs = outcomes(records, {r["trial_id"]: r for r in rows}, col)
    startup = study.get("startup")
    blocks.append(Para(
        f"{str(study.get('sampler') or 'tpe').upper()} proposed these one at a time"
        + (f", the first {startup} as random start-up draws" if isinstance(startup, int) else "")
        + ". Proposals are numbered 1, 2, ... in the order they were made (refused and repeated ones left "
        f"out); each one's {metric} is the mean over its seeds of their best evaluation, the value the search "
        "minimises. A pruned or paused proposal's value is its best before it stopped, on a shorter "
        "budget, so only proposals that ran the full budget count towards the running best."))
    if not outs:
        blocks.append(Para("No proposal has made trials yet."))
    else:
        points = [plots.SearchPoint(o.order, o.value, o.record.from_model, o.full_budget) for o in outs]
        steps = [(o.order, o.running_best) for o in outs if math.isfinite(o.running_best)]
        undrawn = sum(1 for o in outs if not math.isfinite(o.value))
        if undrawn < len(outs):
            caption = (f"{metric} by proposal, in the order proposed: squares are random start-up draws, circles "
                       "TPE's proposals; hollow = stopped before the full budget (pruned or paused: its best "
                       "so far); the line is the running best over proposals that ran the full budget only, "
                       "since pruned ones did not")
            if undrawn:
                caption += f"; {undrawn} proposal(s) without a {metric} yet are not drawn"
            blocks.append(Figure(plots.search_history_svg(points, steps, metric), caption))
        space = study.get("space")
        paths = list(dict.fromkeys([*(space if isinstance(space, dict) else {}),
                                    *(p for o in outs for p in o.record.values)]))
        table = [[str(o.order), _ORIGIN[o.record.from_model], *(_value(o.record.values.get(p)) for p in paths),
                  o.status, _metric(o.value), _metric(o.running_best)]
                 for o in outs]
        blocks.append(Table(["proposal", "origin", *paths, "status", metric, "running best"], table))
    refused = sum(1 for r in records if r.refused is not None)
    repeated = sum(1 for r in records if r.refused is None and r.duplicate_of is not None)
    if refused or repeated:
        blocks.append(Para(f"Not in the table: {refused} proposal(s) refused by validation and {repeated} that "
                           f"repeated an earlier proposal (their records are in {store.location('search')})."))
    if outs:
        blocks.append(Para(_summary(outs, metric)))
    return blocks
