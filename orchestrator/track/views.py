"""What a tracker is told about a trial, built the same way live (from a trial and its events) and
from a finished job folder (its tables): one form, so ``run`` and ``export`` write the same thing."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from rnn.events import EvalRecord, TrialStatus

#: An evaluation's metrics a tracker records against the step, by their column names in ``evals.parquet``.
EVAL_METRICS = ("train_loss", "val_loss", "val_bpc", "val_perplexity", "val_accuracy", "lr", "grad_norm",
                "samples_per_s", "tokens_per_s")
#: A finished trial's metrics (its row's columns), recorded once at its best step.
FINAL_METRICS = ("best_val_loss", "best_val_bpc", "best_val_accuracy")


@dataclass(frozen=True)
class TrialView:
    """One trial as a tracker names it: ``params`` are its whole config, flattened (``model.cell``);
    ``tags`` the swept values among them."""

    trial_id: str
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    """One step's metrics, and when they were measured (epoch seconds)."""

    step: int
    metrics: dict[str, float]
    wall_time: float


@dataclass(frozen=True)
class StoredCheckpoint:
    """A trial's best checkpoint in its job folder, read when a tracker wants it: picklable (the
    trackers' process reads it), unlike a reader bound to a :class:`ResultsStore`."""

    job_dir: str
    trial_id: str

    def __call__(self) -> Optional[bytes]:
        return _store(self.job_dir).read_checkpoint_bytes(self.trial_id)


@functools.lru_cache(maxsize=8)
def _store(job_dir: str) -> Any:
    from orchestrator.results import ResultsStore

    return ResultsStore(job_dir)


@dataclass(frozen=True)
class TrialEnd:
    """How a trial ended: its status, its final metrics at ``step``, and (read on demand, since a
    tracker may not want it) its best checkpoint's bytes."""

    status: str
    step: int
    metrics: dict[str, float]
    checkpoint: Optional[Callable[[], Optional[bytes]]] = None

    @property
    def succeeded(self) -> bool:
        return TrialStatus(self.status).is_success() or self.status == TrialStatus.PRUNED.value


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"cell": "lstm"}}`` as ``{"model.cell": "lstm"}``; a list or a nested mapping
    in a leaf (``train.early_stopping``) is flattened too, None kept."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, path + "."))
        elif isinstance(value, (list, tuple)):
            out[path] = ",".join(str(v) for v in value)
        else:
            out[path] = value
    return out


def eval_point(record: EvalRecord | Mapping[str, Any], wall_time: float) -> Point:
    """An evaluation (an ``EvalRecord`` or an ``evals.parquet`` row) as a :class:`Point`."""
    get = record.get if isinstance(record, Mapping) else lambda k: getattr(record, k, None)
    metrics = {k: float(v) for k in EVAL_METRICS if (v := get(k)) is not None}
    return Point(int(get("step") or 0), metrics, wall_time)


def end_of(row: Mapping[str, Any], checkpoint: Optional[Callable[[], Optional[bytes]]] = None) -> TrialEnd:
    """A committed trials row as a :class:`TrialEnd` (its final metrics where they are numbers)."""
    metrics = {k: float(v) for k in FINAL_METRICS if isinstance(v := row.get(k), (int, float)) and math.isfinite(v)}
    step = row.get("best_step") if row.get("best_step") is not None else row.get("steps")
    return TrialEnd(str(row["status"]), int(step or 0), metrics, checkpoint if row.get("checkpoint") else None)
