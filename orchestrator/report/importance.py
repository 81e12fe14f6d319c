"""Which swept parameters matter: a main-effect variance decomposition, and the sweep's section.

The method (an ANOVA-style "fANOVA-lite" on the trials table, no model fitted): for each
parameter, group the counted trials by its value and take the share of the metric's total
variance that lies *between* the groups,

    eta² = Σ_groups n_g · (mean_g − mean)² / Σ_trials (x − mean)²

A numeric parameter with more than :data:`MAX_LEVELS` distinct values (a random search over a
learning rate) is first cut into that many equal-count bins by rank, so the share does not grow
just because every trial has its own value. On a full grid the main effects are orthogonal and
their shares add up to at most 1, the rest being interactions and seed noise; on a random or
unbalanced sweep correlated parameters can share credit. The variance *within* a configuration
(between seeds of the same settings) is reported alongside: a parameter whose share is not well
above it is not distinguishable from noise at the seeds run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from orchestrator.report import plots
from orchestrator.report.blocks import Block, Figure, Heading, Para, Table

__all__ = ["MAX_LEVELS", "Importance", "at_common_step", "importance_section", "parameter_importance"]

#: A numeric parameter with more distinct values than this is binned by rank into this many levels.
MAX_LEVELS = 4


@dataclass(frozen=True)
class Importance:
    parameter: str
    share: float  # eta²: the fraction of the metric's variance between this parameter's levels
    levels: int  # distinct values, or bins


def _levels(values: Sequence[Any]) -> tuple[list[Any], int]:
    """The group of each value: itself, or its rank bin for a many-valued number."""
    distinct = set(values)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not numeric or len(distinct) <= MAX_LEVELS:
        return list(values), len(distinct)
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups: list[Any] = [0] * len(values)
    for rank, i in enumerate(order):
        groups[i] = rank * MAX_LEVELS // len(values)
    return groups, MAX_LEVELS


def _between_share(groups: Sequence[Any], metric: Sequence[float], total: float) -> float:
    by: dict[Any, list[float]] = defaultdict(list)
    for g, x in zip(groups, metric, strict=True):
        by[repr(g)].append(x)
    mean = sum(metric) / len(metric)
    return sum(len(v) * (sum(v) / len(v) - mean) ** 2 for v in by.values()) / total


def parameter_importance(
    rows: Sequence[Mapping[str, Any]], params: Sequence[str], col: str
) -> tuple[list[Importance], Optional[float]]:
    """Each parameter's eta² on ``col`` over ``rows`` (most important first), and the share of
    variance within identical configurations (None when no configuration was repeated).

    ``rows`` should hold finite values of ``col``; with fewer than 3 rows or no variance the
    list is empty.
    """
    metric = [float(r[col]) for r in rows]
    if len(metric) < 3:
        return [], None
    mean = sum(metric) / len(metric)
    total = sum((x - mean) ** 2 for x in metric)
    if not total > 0:
        return [], None
    out = []
    for p in params:
        groups, k = _levels([r.get(p) for r in rows])
        out.append(Importance(p, _between_share(groups, metric, total), k))
    configs = [tuple(repr(r.get(p)) for p in params) for r in rows]
    repeated = len(set(configs)) < len(configs)
    within = 1 - _between_share(configs, metric, total) if repeated else None
    return sorted(out, key=lambda i: -i.share), within


def at_common_step(
    rows: Sequence[Mapping[str, Any]], evals: Sequence[Mapping[str, Any]], col: str
) -> tuple[list[dict[str, Any]], Optional[int]]:
    """``rows`` (trials) with ``col`` replaced by its evaluation at the last step every one of them
    reached, and that step: the one budget on which trials that successive halving stopped at
    different rungs compare. Trials without a finite value there are left out."""
    by_trial: dict[str, dict[int, float]] = defaultdict(dict)
    wanted = {r["trial_id"] for r in rows}
    for e in evals:
        v = e.get(col)
        if e["trial_id"] in wanted and v is not None and math.isfinite(v):
            by_trial[e["trial_id"]][e["step"]] = v
    if not by_trial or len(by_trial) < len(wanted):
        return [], None
    step = min(max(steps) for steps in by_trial.values())
    out = []
    for r in rows:
        seen = by_trial[r["trial_id"]]
        last = max(s for s in seen if s <= step) if any(s <= step for s in seen) else None
        if last is not None:
            out.append({**r, col: seen[last]})
    return out, step


def importance_section(
    rows: Sequence[Mapping[str, Any]], params: Sequence[str], col: str, note: str = ""
) -> list[Block]:
    """Parallel coordinates and parameter importance, for sweeps over two or more parameters;
    ``note`` says on what budget ``col`` was taken when it is not the trials' own best."""
    if len(params) < 2:
        return []
    ok = [r for r in rows if r.get(col) is not None and math.isfinite(r[col])]
    blocks: list[Block] = [Heading(2, "Parameters: parallel coordinates and importance")]
    if note:
        blocks.append(Para(note))
    if len(ok) < 3:
        return blocks + [Para(f"Fewer than 3 trials with a finite {col}: nothing to decompose yet.")]
    drawn = plots.thin(sorted(ok, key=lambda r: r[col]))
    svg = plots.parallel_coordinates_svg({p: [r.get(p) for r in drawn] for p in params}, [r[col] for r in drawn], col)
    thinned = (f"; {len(drawn):,} of {len(ok):,} trials drawn, at evenly spaced ranks of {col} (the best and "
               "the worst included); the importance below uses all of them" if len(drawn) < len(ok) else "")
    blocks.append(Figure(svg, f"one line per trial across the swept parameters, coloured by {col} "
                              f"(lower is better, drawn on top){thinned}"))
    found, within = parameter_importance(ok, params, col)
    if not found:
        return blocks + [Para(f"Every trial has the same {col}: no parameter explains anything.")]
    table = [[i.parameter, str(i.levels), f"{i.share:.1%}"] for i in found]
    if within is not None:
        table.append(["(between seeds of one configuration)", "—", f"{within:.1%}"])
    noise = (" The last row is seed-to-seed variance within identical settings: a share not well above it "
             "is not distinguishable from noise." if within is not None else
             " No configuration was repeated with another seed, so seed noise cannot be told apart here.")
    blocks += [
        Para(f"Importance is each parameter's main effect: the share of the variance of {col} across "
             f"these {len(ok)} trials that lies between the groups of trials sharing a value of it "
             f"(eta², one-way ANOVA; a number with more than {MAX_LEVELS} values is binned by rank into "
             f"{MAX_LEVELS}). Shares need not add up to 100%: the rest is interactions and noise, and "
             "correlated parameters share credit." + noise),
        Table(["parameter", "levels", "share of variance"], table),
    ]
    tangled = confounded_pairs(ok, [i.parameter for i in found])
    if tangled:
        pairs = "; ".join(f"{a} and {b} ({seen} of their {every} combinations ran)" for a, b, seen, every in tangled)
        blocks.append(Para(f"Not varied independently: {pairs}. Their shares cannot be told apart: a share "
                           "credited to one may belong to the other (variants set settings together)."))
    return blocks


def confounded_pairs(rows: Sequence[Mapping[str, Any]], params: Sequence[str]) -> list[tuple[str, str, int, int]]:
    """Pairs of parameters (each with at most :data:`MAX_LEVELS` values, so not a random search's
    continuous draws) that did not run in every combination of their values: (a, b, combinations
    run, combinations possible)."""
    def key(value: Any) -> Any:
        return repr(value)

    levels = {p: {key(r.get(p)) for r in rows} for p in params}
    small = [p for p in params if 1 < len(levels[p]) <= MAX_LEVELS]
    out = []
    for i, a in enumerate(small):
        for b in small[i + 1:]:
            seen = len({(key(r.get(a)), key(r.get(b))) for r in rows})
            every = len(levels[a]) * len(levels[b])
            if seen < every:
                out.append((a, b, seen, every))
    return out
