"""Trackers: a job's results also written to TensorBoard and MLflow, by the driver, as they arrive
(:class:`Tracker`), or afterwards from a job folder (``export``). Workers know nothing of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from orchestrator.results import ResultsStore
from orchestrator.spec.tracking import TrackingSpec
from orchestrator.track.tracker import Sink, Tracker

__all__ = ["Sink", "Tracker", "TENSORBOARD_DIR", "TRACKING_STATE", "sink_openers", "sync_folder"]

#: Where a job's TensorBoard run folders go, inside the job folder (one per trial).
TENSORBOARD_DIR = "tensorboard"
#: The job folder's record of its MLflow runs, by tracking URI.
TRACKING_STATE = "tracking.json"


def sink_openers(tracking: TrackingSpec, job_name: str, store: ResultsStore,
                 tensorboard_dir: Optional[str] = None) -> list[Callable[[], Sink]]:
    """What opens each sink ``tracking`` asks for (called on the tracker's thread)."""
    openers: list[Callable[[], Sink]] = []
    if tracking.tensorboard:
        def tensorboard() -> Sink:
            from orchestrator.track.tensorboard import TensorBoardSink

            return TensorBoardSink(tensorboard_dir or store.location(TENSORBOARD_DIR))

        tensorboard.sink_name = "tensorboard"  # type: ignore[attr-defined]
        openers.append(tensorboard)
    uri = tracking.mlflow
    if uri is not None:
        def mlflow() -> Sink:
            from orchestrator.track.mlflow_sink import MlflowSink

            return MlflowSink(uri, tracking.mlflow_experiment or job_name, job_name, store.job_dir,
                              (lambda: store.read_text(TRACKING_STATE), lambda t: store.write_text(TRACKING_STATE, t)),
                              tracking.mlflow_artifact_max_mb)

        mlflow.sink_name = f"mlflow ({uri})"  # type: ignore[attr-defined]
        openers.append(mlflow)
    return openers


def sync_folder(tracker: Tracker, store: ResultsStore) -> int:
    """Queue a job folder's committed trials and evaluations for ``tracker``; the number of trials."""
    return tracker.sync(store.read_trials().to_pylist(), store.read_evals().to_pylist(),
                        lambda tid: lambda: store.read_checkpoint_bytes(tid))
