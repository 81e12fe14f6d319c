"""Where :class:`~orchestrator.track.mlflow_sink.MlflowSink` reads and writes an MLflow tracking
store: :class:`ClientStore` through MLflow's client (a tracking server), or
:class:`~orchestrator.track.mlflow_db.DbStore` straight into a tracking database's tables. Both
answer the same few questions (an experiment, a run, a job's trial runs, the steps a run holds)
and write what the sink has buffered (:class:`Writes`), so the sink does not know which it has.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Optional, Protocol

#: MLflow's limits: a ``log_batch`` call, a param's and a tag's value.
PARAMS_PER_BATCH, METRICS_PER_BATCH, TAGS_PER_BATCH = 100, 1000, 100
MAX_PARAM, MAX_TAG = 6000, 8000


@dataclass
class Writes:
    """What one run gets at the next flush. ``create``: the run is new (its name, tags and start
    time), made by the flush (database) or already made (client). ``status``: its new status, with
    its end time (None: the end time is left as it is)."""

    run_id: str
    create: Optional[tuple[str, dict[str, str], int]] = None
    params: list[tuple[str, str]] = field(default_factory=list)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, time (ms), step
    tags: dict[str, str] = field(default_factory=dict)
    status: Optional[tuple[str, Optional[int]]] = None


@dataclass(frozen=True)
class Experiment:
    experiment_id: str
    artifact_location: str
    deleted: bool


@dataclass(frozen=True)
class StoredRun:
    """A run as the store has it; ``tags`` only where asked for (``trial_runs``: ``trial_id`` and ``status``)."""

    run_id: str
    status: str
    artifact_uri: str
    deleted: bool
    tags: dict[str, str] = field(default_factory=dict)


class RunStore(Protocol):
    def experiment(self, name: str) -> Optional[Experiment]: ...
    def create_experiment(self, name: str, artifact_location: Optional[str]) -> None: ...
    def run(self, run_id: str) -> Optional[StoredRun]: ...
    def trial_runs(self, experiment_id: str, parent_run_id: str) -> list[StoredRun]: ...
    def last_steps(self, run_id: str, keys: tuple[str, ...]) -> dict[str, int]: ...
    def create(self, experiment_id: str, name: str, tags: dict[str, str], start_ms: int) -> tuple[str, str, bool]: ...
    def write(self, runs: list[Writes]) -> None: ...
    def close(self) -> None: ...


class ClientStore:
    """Through ``MlflowClient`` (a tracking server): per run, ``log_batch`` calls and an update."""

    def __init__(self, uri: str) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=uri)

    def experiment(self, name: str) -> Optional[Experiment]:
        found = self._client.get_experiment_by_name(name)
        if found is None:
            return None
        return Experiment(str(found.experiment_id), str(found.artifact_location), found.lifecycle_stage == "deleted")

    def create_experiment(self, name: str, artifact_location: Optional[str]) -> None:
        self._client.create_experiment(name, artifact_location=artifact_location)

    def run(self, run_id: str) -> Optional[StoredRun]:
        from mlflow.exceptions import MlflowException

        try:
            info = self._client.get_run(run_id).info
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return StoredRun(str(info.run_id), str(info.status), str(info.artifact_uri), info.lifecycle_stage == "deleted")

    def trial_runs(self, experiment_id: str, parent_run_id: str) -> list[StoredRun]:
        """The parent's live child runs, the latest started first (as MLflow's search orders them)."""
        runs: list[StoredRun] = []
        token = None
        while True:
            page = self._client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                            max_results=1000, page_token=token)
            runs += [StoredRun(str(r.info.run_id), str(r.info.status), str(r.info.artifact_uri), False,
                               {k: r.data.tags[k] for k in ("trial_id", "status") if k in r.data.tags}) for r in page]
            token = page.token
            if not token:
                return runs

    def last_steps(self, run_id: str, keys: tuple[str, ...]) -> dict[str, int]:
        steps = {}
        for key in keys:
            history = self._client.get_metric_history(run_id, key)
            if history:
                steps[key] = max(m.step for m in history)
        return steps

    def create(self, experiment_id: str, name: str, tags: dict[str, str], start_ms: int) -> tuple[str, str, bool]:
        """A new run's id and artifact URI; True where ``write`` is still to make it (never here)."""
        info = self._client.create_run(experiment_id, start_time=start_ms, tags=tags, run_name=name).info
        return str(info.run_id), str(info.artifact_uri), False

    def write(self, runs: list[Writes]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        for w in runs:
            metrics = [Metric(k, v, t, s) for k, v, t, s in w.metrics]
            params = [Param(k, v) for k, v in w.params]
            tags = [RunTag(k, v) for k, v in w.tags.items()]
            # up to 100 params and 100 tags with 800 metrics a call: within log_batch's 1,000 entities
            per = METRICS_PER_BATCH - PARAMS_PER_BATCH - TAGS_PER_BATCH
            calls = max(-(-len(metrics) // per), -(-len(params) // PARAMS_PER_BATCH), -(-len(tags) // TAGS_PER_BATCH))
            for i in range(calls):
                self._client.log_batch(w.run_id, metrics=metrics[i * per:(i + 1) * per],
                                       params=params[i * PARAMS_PER_BATCH:(i + 1) * PARAMS_PER_BATCH],
                                       tags=tags[i * TAGS_PER_BATCH:(i + 1) * TAGS_PER_BATCH])
            if w.status is not None:
                status, end_ms = w.status
                if end_ms is None:
                    self._client.update_run(w.run_id, status=status)
                else:
                    self._client.set_terminated(w.run_id, status, end_ms)

    def close(self) -> None:
        pass


def append_uri(location: str, *parts: str) -> str:
    """``parts`` appended to the path of the URI (or plain path) ``location``, as MLflow's
    ``append_to_uri_path`` does: a run's artifact URI is its experiment's location ``/<run id>/artifacts``."""
    parsed = urllib.parse.urlparse(location)
    if not parsed.scheme or not (parsed.query or parsed.params or parsed.fragment):
        return "/".join([location.rstrip("/"), *parts]) if location else "/".join(parts)
    return urllib.parse.urlunparse(parsed._replace(path="/".join([parsed.path.rstrip("/"), *parts])))


def sanitize(value: float) -> tuple[bool, float]:
    """(is NaN, the value a database holds): MLflow's store keeps NaN as 0 and flags it, and
    +-inf as the largest finite float."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, math.copysign(1.7976931348623157e308, value)
    return False, value

