"""Successive halving's cuts against seed noise: was each rung's decision bigger than chance?

At a rung, the scheduler ranks the trials that reached it by the metric at that step and prunes
the worse ones. The closest call is the margin between the best pruned trial and the worst one
promoted. Where a configuration ran with several seeds, the spread of its seeds' values at that
step measures how far chance alone moves the metric; a margin below it is a decision the seeds
could have reversed. The section is only for jobs that pruned something.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping
from typing import Optional

from orchestrator.report.blocks import Block, Heading, Para, Table, fmt_num

__all__ = ["rung_decisions"]


def _seed_spread(values: Mapping[str, float], label: Mapping[str, str]) -> Optional[float]:
    """The pooled standard deviation across seeds of one configuration (None: no configuration has
    two seeds here)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for tid, value in values.items():
        groups[label[tid]].append(value)
    variances = [statistics.variance(v) for v in groups.values() if len(v) >= 2]
    return math.sqrt(sum(variances) / len(variances)) if variances else None


def rung_decisions(rows: list[dict], evals: list[dict], label: Mapping[str, str], col: str) -> list[Block]:
    """One row per rung that pruned: trials judged, promoted, pruned, the closest margin and the
    seed spread at that step; a sentence when a margin is within the spread. ``label``: each
    trial's configuration without its seed; ``col``: the evaluation column ranked (lower is better)."""
    pruned = [r for r in rows if r["status"] == "pruned" and r.get("steps")]
    if not pruned:
        return []
    value: dict[tuple[str, int], float] = {}
    last: dict[str, int] = {}
    for e in evals:
        v = e.get(col)
        if v is not None and math.isfinite(v):
            value[(e["trial_id"], e["step"])] = v
        last[e["trial_id"]] = max(last.get(e["trial_id"], 0), e["step"])
    table, close = [], []
    for step in sorted({r["steps"] for r in pruned}):
        at = {tid: v for (tid, s), v in value.items() if s == step and tid in label}
        dropped = [r["trial_id"] for r in pruned if r["steps"] == step and r["trial_id"] in at]
        kept = [tid for tid in at if last.get(tid, 0) > step]
        if not dropped or not kept:
            continue
        margin = min(at[t] for t in dropped) - max(at[t] for t in kept)
        spread = _seed_spread(at, label)
        if spread is None:
            verdict = "no seeds to compare"
        elif margin < spread:
            verdict = "within seed noise"
            close.append((step, margin, spread))
        else:
            verdict = "beyond seed noise"
        table.append([f"{step:,}", str(len(at)), str(len(kept)), str(len(dropped)), fmt_num(margin),
                      fmt_num(spread), verdict])
    if not table:
        return []
    blocks: list[Block] = [
        Heading(2, "Successive halving's decisions"),
        Para(f"At each rung the trials were ranked by {col} at that step. The margin is the best pruned trial's value "
             "minus the worst promoted one's (the closest call); the seed spread is the standard deviation of one "
             "configuration's seeds at that step, pooled over the configurations with two or more."),
        Table(["rung step", "trials", "promoted", "pruned", "closest margin", "seed spread", "verdict"], table),
    ]
    if close:
        steps = ", ".join(f"step {s:,} (margin {m:.4f} < spread {sp:.4f})" for s, m, sp in close)
        blocks.append(Para(f"At {steps}, the cut was smaller than the seed-to-seed spread: a different seed could "
                           "have promoted a pruned trial. Treat those prunings as undecided; a later grace step "
                           "(sweep.scheduler.grace_steps) or more seeds would separate them.", box="answer"))
    return blocks
