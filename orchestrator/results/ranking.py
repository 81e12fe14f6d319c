"""Which metric ranks a job's trials, and the ranking: one rule for the report and ``clean``.

Loss per token is not comparable across tokenizations (a BPE token carries several characters),
so when ``data.level`` or ``data.vocab_size`` vary across a job's trials and bits per character
were recorded, trials are ranked by ``best_val_bpc``; otherwise by ``best_val_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.results.tables import SUCCESS_STATUSES

#: Config columns that change what one token is.
TOKENIZATION_COLUMNS: tuple[str, ...] = ("data.level", "data.vocab_size")


def _key(value: Any) -> Any:
    """A hashable stand-in that treats NaN as equal to NaN."""
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    return value


def varying_columns(rows: Sequence[Mapping[str, Any]], columns: Iterable[str]) -> list[str]:
    """Those of ``columns`` (in order) that take more than one value across ``rows``."""
    return [col for col in columns if len({_key(r.get(col)) for r in rows}) > 1]


@dataclass(frozen=True)
class RankingMetric:
    """The metric trials are compared on: its trials column, its evals column, and why."""

    trials_column: str
    evals_column: str
    why: str


def ranking_metric(rows: Sequence[Mapping[str, Any]]) -> RankingMetric:
    """The metric that ranks ``rows`` (trials table rows, flattened config columns included)."""
    moved = varying_columns(rows, TOKENIZATION_COLUMNS)
    if moved and any(r.get("best_val_bpc") is not None for r in rows):
        return RankingMetric("best_val_bpc", "val_bpc", (
            f"Compared on bits per character: {', '.join(moved)} vary, and loss per token is "
            "not comparable across tokenizations."))
    return RankingMetric("best_val_loss", "val_loss", "Compared on validation loss (nats per token).")


def rank_trials(rows: Sequence[Mapping[str, Any]], metric: RankingMetric) -> list[Mapping[str, Any]]:
    """Completed and early-stopped trials with a finite metric, best (lowest) first."""
    col = metric.trials_column
    ranked = [r for r in rows if r["status"] in SUCCESS_STATUSES and r.get(col) is not None and math.isfinite(r[col])]
    return sorted(ranked, key=lambda r: r[col])
