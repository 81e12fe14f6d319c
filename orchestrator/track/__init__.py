"""Trackers: a job's results also written to TensorBoard and MLflow, by the driver, as they arrive
(:class:`Tracker`), or afterwards from a job folder (``export``). Workers know nothing of them.

The trackers' process (:mod:`~orchestrator.track.writer`) imports this package too, so it imports
nothing of the driver's at the top: :class:`Tracker` (and with it ``orchestrator.run``) on first use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from orchestrator.track.sinks import Sink
from orchestrator.track.views import StoredCheckpoint

if TYPE_CHECKING:
    from orchestrator.results import ResultsStore
    from orchestrator.spec.tracking import TrackingSpec
    from orchestrator.track.tracker import Tracker

__all__ = ["Sink", "Tracker", "TENSORBOARD_DIR", "TRACKING_STATE", "sink_modules", "sink_openers", "sync_folder"]


def __getattr__(name: str) -> Any:
    if name == "Tracker":
        from orchestrator.track.tracker import Tracker

        return Tracker
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Where a job's TensorBoard run folders go, inside the job folder (one per trial).
TENSORBOARD_DIR = "tensorboard"
#: The job folder's record of its MLflow runs, by tracking URI.
TRACKING_STATE = "tracking.json"


def sink_openers(tracking: TrackingSpec, job_name: str, store: ResultsStore,
                 tensorboard_dir: Optional[str] = None) -> list[Callable[[], Sink]]:
    """What opens each sink ``tracking`` asks for: called in the trackers' process, so each is a
    picklable ``functools.partial`` (its ``sink_name`` says which)."""
    openers: list[Callable[[], Sink]] = []
    if tracking.tensorboard:
        from orchestrator.track.tensorboard import TensorBoardSink

        tensorboard = functools.partial(TensorBoardSink, tensorboard_dir or store.location(TENSORBOARD_DIR))
        tensorboard.sink_name = "tensorboard"  # type: ignore[attr-defined]
        openers.append(tensorboard)
    uri = tracking.mlflow
    if uri is not None:
        mlflow = functools.partial(_open_mlflow, uri, tracking.mlflow_experiment or job_name, job_name, store.job_dir,
                                   tracking.mlflow_artifact_max_mb)
        mlflow.sink_name = f"mlflow ({uri})"  # type: ignore[attr-defined]
        openers.append(mlflow)
    return openers


def sink_modules(tracking: TrackingSpec) -> list[str]:
    """The modules the sinks ``tracking`` asks for will import (``Tracker``'s ``preload``), in order.
    For a server, MLflow's client (1-1.5 s of CPU to import) after the sink's own module, which sets
    MLflow's environment (telemetry off) before MLflow is imported; a database is written with
    SQLAlchemy alone (:mod:`~orchestrator.track.mlflow_db`)."""
    from orchestrator.spec.tracking import is_server

    modules = []
    if tracking.tensorboard:
        modules += ["orchestrator.track.tensorboard", "tensorboard.compat.proto.event_pb2",
                    "tensorboard.plugins.hparams.api_pb2"]
    if tracking.mlflow is not None:
        modules += ["orchestrator.track.mlflow_sink"]
        modules += ["mlflow"] if is_server(tracking.mlflow) else ["orchestrator.track.mlflow_db", "sqlalchemy"]
    return modules


def _open_mlflow(uri: str, experiment: str, job_name: str, job_dir: str, artifact_max_mb: float) -> Sink:
    from orchestrator.results import ResultsStore
    from orchestrator.track.mlflow_sink import MlflowSink

    store = ResultsStore(job_dir)
    state = (functools.partial(store.read_text, TRACKING_STATE), functools.partial(store.write_text, TRACKING_STATE))
    return MlflowSink(uri, experiment, job_name, job_dir, state, artifact_max_mb)


def sync_folder(tracker: Tracker, store: ResultsStore) -> int:
    """Queue a job folder's committed trials and evaluations for ``tracker``; the number of trials."""
    return tracker.sync(store.read_trials().to_pylist(), store.read_evals().to_pylist(),
                        lambda tid: StoredCheckpoint(store.job_dir, tid))
