"""Statistics for the report: confidence intervals across seeds and paired comparisons.

Seeds are the unit of replication: a configuration run with seeds 0..4 gives five
independent draws of its final metric. Two configurations run on the same seeds share their
data order and initialisation draws, so they are compared per seed (a paired t-test), which
removes the seed-to-seed variance the two have in common.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from scipy import stats as _st

from orchestrator.results.ranking import varying_columns

__all__ = ["PairedTest", "config_label", "config_labels", "mean_ci", "paired_test", "shared_seeds",
           "varying_columns"]


def _finite(values: Iterable[Any]) -> np.ndarray:
    arr = np.array([v for v in values if v is not None], dtype=float)
    return arr[np.isfinite(arr)]


def mean_ci(values: Iterable[Optional[float]], confidence: float = 0.95) -> tuple[float, float, int]:
    """Mean, t-distribution confidence half-width and n of the finite values.

    ``None`` and NaN/inf values are dropped (a diverged run has no meaningful final loss);
    ``n`` counts what is left. n=0 gives ``(nan, nan, 0)``; n=1 gives ``(x, nan, 1)``: one
    value says nothing about the spread.
    """
    arr = _finite(values)
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    if n == 1:
        return mean, math.nan, 1
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    return mean, float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sem, n


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``a - b`` over the seeds both have.

    ``t`` and ``p`` are NaN when every seed gives the same difference (zero variance:
    the test is undefined); ``note`` then says so.
    """

    n: int  # pairs: seeds with a finite value on both sides
    seeds: tuple[Hashable, ...]
    mean_diff: float  # mean of a - b
    ci_half_width: float  # of the mean difference, at ``confidence``
    t: float
    p: float  # two-sided
    note: Optional[str] = None


def shared_seeds(a_by_seed: Mapping[Hashable, Any], b_by_seed: Mapping[Hashable, Any]) -> list[Hashable]:
    """Seeds with a finite value on both sides, sorted."""
    seeds = [s for s in a_by_seed if s in b_by_seed]
    ok = [s for s in seeds if _finite([a_by_seed[s], b_by_seed[s]]).size == 2]
    return sorted(ok, key=lambda s: (str(type(s)), s))


def paired_test(
    a_by_seed: Mapping[Hashable, Optional[float]],
    b_by_seed: Mapping[Hashable, Optional[float]],
    confidence: float = 0.95,
) -> Optional[PairedTest]:
    """Paired t-test (``scipy.stats.ttest_rel``) of ``a`` against ``b`` matched by seed.

    Returns None when fewer than two seeds have finite values on both sides.
    """
    seeds = shared_seeds(a_by_seed, b_by_seed)
    if len(seeds) < 2:
        return None
    a = np.array([a_by_seed[s] for s in seeds], dtype=float)
    b = np.array([b_by_seed[s] for s in seeds], dtype=float)
    d = a - b
    n = len(seeds)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    # Identical differences: scipy would report t=+-inf, p=0 (and warn), which overstates
    # certainty from what is usually a tie or a deterministic offset.
    if sd <= 1e-12 * max(1.0, abs(mean)):
        return PairedTest(n=n, seeds=tuple(seeds), mean_diff=mean, ci_half_width=0.0, t=math.nan, p=math.nan,
                          note="every seed gives the same difference; the t-test is undefined")
    res = _st.ttest_rel(a, b)
    half = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return PairedTest(n=n, seeds=tuple(seeds), mean_diff=mean, ci_half_width=half,
                      t=float(res.statistic), p=float(res.pvalue))


def config_label(row: Mapping[str, Any], varying: Sequence[str], digits: Optional[int] = None) -> str:
    """``"model.cell=gru, train.lr=0.002"`` from the varying columns; ``"all trials"`` if none vary.

    ``digits``: floats to that many significant digits (a random draw's 0.02586552182709658
    reads 0.02587).
    """
    if not varying:
        return "all trials"

    def value(v: Any) -> Any:
        return format(v, f".{digits}g") if digits and isinstance(v, float) else v

    return ", ".join(f"{col}={value(row.get(col))}" for col in varying)


def config_labels(rows: Sequence[Mapping[str, Any]], varying: Sequence[str], digits: int = 4) -> dict[str, str]:
    """Trial id -> configuration label, floats shortened to ``digits`` significant digits unless
    that would give two different configurations the same label."""
    full = {r["trial_id"]: config_label(r, varying) for r in rows}
    short = {r["trial_id"]: config_label(r, varying, digits) for r in rows}
    same = len(set(short.values())) == len(set(full.values()))
    return short if same else full
