"""Successive halving's rung arithmetic: where the rungs sit and what a sweep spends on them.

Plain integer arithmetic shared by ``plan`` (the budget it shows), the spec's checks and the
scheduler (:mod:`orchestrator.run.asha`, which explains the promotion rule these count).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["asha_rungs", "budget_steps", "promotion_caps", "worst_budget_steps", "worst_promotions"]


def asha_rungs(grace_steps: int, reduction_factor: int, max_steps: int) -> tuple[int, ...]:
    """The rung steps: ``grace * rf**k`` below ``max_steps``, then ``max_steps`` itself (the last
    rung is the full budget, where a trial completes instead of pausing)."""
    rungs: list[int] = []
    step = grace_steps
    while step < max_steps:
        rungs.append(step)
        step *= reduction_factor
    return (*rungs, max_steps)


def promotion_caps(n_trials: int, rungs: int, reduction_factor: int) -> list[int]:
    """Trials leaving each pause rung upwards under synchronous halving: ``max(1, A_k // rf)``,
    where ``A_0`` is ``n_trials`` and ``A_{k+1}`` the count before it (see
    :mod:`orchestrator.run.asha`)."""
    caps, arriving = [], n_trials
    for _ in range(rungs):
        cap = max(1, arriving // reduction_factor) if arriving else 0
        caps.append(cap)
        arriving = cap
    return caps


def worst_promotions(n_trials: int, rungs: int, reduction_factor: int) -> list[int]:
    """The most trials asynchronous halving can promote from each pause rung: ``A_k - rf + 1``
    (each arrival better than all before it is promoted once ``rf`` have arrived), at least 1."""
    out, arriving = [], n_trials
    for _ in range(rungs):
        arriving = max(min(arriving, 1), arriving - reduction_factor + 1)
        out.append(arriving)
    return out


def _steps(arriving: Sequence[int], rungs: Sequence[int]) -> int:
    total, previous = 0, 0
    for count, step in zip(arriving, rungs, strict=True):
        total += count * (step - previous)
        previous = step
    return total


def budget_steps(n_trials: int, rungs: Sequence[int], reduction_factor: int) -> int:
    """Training steps synchronous halving spends on ``n_trials`` trials (``rungs`` ends with
    max_steps): what asynchronous halving spends when arrivals come in no particular order."""
    return _steps([n_trials, *promotion_caps(n_trials, len(rungs) - 1, reduction_factor)], rungs)


def worst_budget_steps(n_trials: int, rungs: Sequence[int], reduction_factor: int) -> int:
    """The most training steps asynchronous halving can spend (the worst arrival order), not
    counting steps redone after a lost worker."""
    return _steps([n_trials, *worst_promotions(n_trials, len(rungs) - 1, reduction_factor)], rungs)
