"""MLflow: one run per job, with one nested run per trial, named by its trial id.

The job's run id is kept in the job folder (``tracking.json``, by tracking URI), so a resumed job
(or an ``export`` to the same URI) finds the same runs: its trials' runs are the job run's
children (``mlflow.parentRunId``), found with one search when the sink opens. A trial's run gets
its config as params, its swept values and ``trial_id`` as tags, each evaluation's metrics at
their step, then its final metrics, its ``status`` tag and its best checkpoint as an artifact
(under ``checkpoint/``, up to ``artifact_max_mb``; over it, a ``checkpoint_artifact`` tag says why
not). The job's run gets the report's files at the end. Metrics already in a run (per key, by
step) are not logged again.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from orchestrator.spec.tracking import sqlite_path
from orchestrator.track.views import EVAL_METRICS, FINAL_METRICS, Point, TrialEnd, TrialView

log = logging.getLogger(__name__)

#: MLflow's client retries an unreachable server for minutes by default, where a driver's tracker
#: gives up sooner; it writes two "View run" lines to stdout (the driver's progress log) per run it
#: ends; and it sends usage telemetry, which a driver on a user's cluster should not. Defaults only:
#: a value already in the environment is kept.
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                   "MLFLOW_HTTP_REQUEST_TIMEOUT": "20", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
                   "MLFLOW_DISABLE_TELEMETRY": "true"}
_TERMINAL = ("FINISHED", "FAILED", "KILLED")
_PARAMS_PER_BATCH, _METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits
_MAX_VALUE = 6000  # MLflow's longest param value


@dataclass
class _Run:
    run_id: str
    status: str
    steps: Optional[dict[str, int]] = None  # the last step of each metric key, read on first use
    params: list[Any] = field(default_factory=list)  # params not logged yet (they go with the next batch)
    status_tag: Optional[str] = None  # the trial's status as the run's ``status`` tag says


class MlflowSink:
    """Writes a job's trials to the MLflow tracking store at ``uri`` (see the module docstring).

    ``state``: reads and writes the job folder's ``tracking.json`` text (None: absent).
    """

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, job_name: str, job_dir: str,
                 state: tuple[Callable[[], Optional[str]], Callable[[str], Any]], artifact_max_mb: float) -> None:
        for key, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient

        # MLflow logs its own INFO lines ("View run ... at", database set-up) through a handler of its
        # own, and urllib3 one line per retry: the driver's log says once what went wrong (Tracker).
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self.uri = _canonical(uri)
        self._client = MlflowClient(tracking_uri=self.uri)
        self._job_dir = job_dir
        self._max_bytes = int(artifact_max_mb * 1_000_000)
        self._experiment_id = self._experiment(experiment)
        self._job_run = self._job(job_name, *state)
        self._runs = self._children()

    # --- what a tracker calls -------------------------------------------------------------

    def log(self, view: TrialView, points: list[Point], tags: Optional[dict[str, str]] = None) -> None:
        """The points' metrics at steps the run does not have yet (and ``tags``), in one call."""
        run = self._run(view)
        steps = self._steps(run)
        from mlflow.entities import Metric, RunTag

        metrics = []
        for point in sorted(points, key=lambda p: p.step):
            stamp = int(point.wall_time * 1000)
            for key, value in point.metrics.items():
                if point.step > steps.get(key, -1):
                    metrics.append(Metric(key, value, stamp, point.step))
                    steps[key] = point.step
        if metrics and run.status in _TERMINAL:  # a failed trial run again: its run goes on
            self._client.update_run(run.run_id, status="RUNNING")
            run.status = "RUNNING"
        run_tags = [RunTag(k, v) for k, v in (tags or {}).items()]
        params, run.params = run.params, []
        # 900 metrics with up to 100 params: within log_batch's 1,000 entities
        for i in range(0, max(len(metrics), len(run_tags), len(params)), _METRICS_PER_BATCH - _PARAMS_PER_BATCH):
            batch = metrics[i:i + _METRICS_PER_BATCH - _PARAMS_PER_BATCH]
            first = i == 0
            self._client.log_batch(run.run_id, metrics=batch, params=params if first else [],
                                   tags=run_tags if first else [])

    def holds(self, trial_id: str, status: str) -> bool:
        """Whether the trial's run has ended with this status (so it has everything)."""
        run = self._runs.get(trial_id)
        return run is not None and run.status in _TERMINAL and run.status_tag == status

    def end(self, view: TrialView, end: Optional[TrialEnd]) -> None:
        run = self._run(view)
        if end is None:  # paused at a rung: the run stays open for its promotion
            self._client.set_tag(run.run_id, "status", "paused")
            return
        self.log(view, [Point(end.step, end.metrics, time.time())], {"status": end.status})
        run.status_tag = end.status
        if run.status in _TERMINAL:
            return  # ended before with its artifact (a resumed job, an export run twice)
        if end.checkpoint is not None and self._max_bytes > 0:
            self._log_checkpoint(run, end.checkpoint)
        status = "FINISHED" if end.succeeded else ("KILLED" if end.status == "timeout" else "FAILED")
        self._client.set_terminated(run.run_id, status)
        run.status = status

    def finish(self, report_files: list[Path]) -> None:
        """The report's files go to the job's run, which is then finished."""
        for path in report_files:
            if path.is_file() and path.stat().st_size <= self._max_bytes:
                self._client.log_artifact(self._job_run, str(path), "report")
        self._client.set_terminated(self._job_run, "FINISHED")

    def close(self) -> None:
        """Nothing is held open between calls."""

    # --- pieces ---------------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        found = self._client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise RuntimeError(f"the MLflow experiment {name!r} is deleted; restore it or name another "
                                   "(tracking.mlflow_experiment)")
            return str(found.experiment_id)
        db = sqlite_path(self.uri)
        # a local database keeps its artifacts beside it, not in the driver's working directory
        location = Path(os.path.abspath(db)).parent.joinpath("mlartifacts").as_uri() if db else None
        try:
            return str(self._client.create_experiment(name, artifact_location=location))
        except Exception:  # noqa: BLE001  (created meanwhile by another job: use it)
            again = self._client.get_experiment_by_name(name)
            if again is None:
                raise
            return str(again.experiment_id)

    def _job(self, job_name: str, read: Callable[[], Optional[str]], write: Callable[[str], Any]) -> str:
        """The job's run: the one ``tracking.json`` names for this URI if it still exists, else a new one."""
        state = _parse(read())
        known = state.setdefault("mlflow", {}).get(self.uri)
        if isinstance(known, dict) and isinstance(known.get("run_id"), str):
            try:
                run = self._client.get_run(known["run_id"])
                if run.info.lifecycle_stage != "deleted":
                    if run.info.status in _TERMINAL:
                        self._client.update_run(run.info.run_id, status="RUNNING")
                    return str(run.info.run_id)
            except Exception as e:  # noqa: BLE001  (gone from this store: start a new run)
                log.info("mlflow: the job's run %s is not in %s (%s); starting a new one", known["run_id"], self.uri, e)
        run = self._client.create_run(self._experiment_id, run_name=job_name,
                                      tags={"job_dir": self._job_dir, "rnn.role": "job"})
        state["mlflow"][self.uri] = {"experiment_id": self._experiment_id, "run_id": run.info.run_id}
        write(json.dumps(state, indent=2, sort_keys=True) + "\n")
        return str(run.info.run_id)

    def _children(self) -> dict[str, _Run]:
        runs: dict[str, _Run] = {}
        token = None
        while True:
            page = self._client.search_runs([self._experiment_id],
                                            filter_string=f"tags.mlflow.parentRunId = '{self._job_run}'",
                                            max_results=1000, page_token=token)
            for run in page:
                tid = run.data.tags.get("trial_id")
                if tid and tid not in runs:
                    runs[tid] = _Run(run.info.run_id, run.info.status, status_tag=run.data.tags.get("status"))
            token = page.token
            if not token:
                return runs

    def _run(self, view: TrialView) -> _Run:
        run = self._runs.get(view.trial_id)
        if run is not None:
            return run
        from mlflow.entities import Param

        tags = {**view.tags, "mlflow.parentRunId": self._job_run, "trial_id": view.trial_id, "job_dir": self._job_dir}
        info = self._client.create_run(self._experiment_id, run_name=view.trial_id, tags=tags).info
        params = [Param(k, _text(v)) for k, v in view.params.items()]
        run = self._runs[view.trial_id] = _Run(info.run_id, info.status, steps={})
        # The first params ride with the first metrics (one call fewer per trial: a SQL store's
        # call costs about 10 ms of the driver's CPU); the rest, if any, on their own.
        run.params, rest = params[:_PARAMS_PER_BATCH], params[_PARAMS_PER_BATCH:]
        for i in range(0, len(rest), _PARAMS_PER_BATCH):
            self._client.log_batch(info.run_id, params=rest[i:i + _PARAMS_PER_BATCH])
        return run

    def _steps(self, run: _Run) -> dict[str, int]:
        if run.steps is None:  # a run an earlier driver made: what it has, per key
            run.steps = {}
            for key in (*EVAL_METRICS, *FINAL_METRICS):
                history = self._client.get_metric_history(run.run_id, key)
                if history:
                    run.steps[key] = max(m.step for m in history)
        return run.steps

    def _log_checkpoint(self, run: _Run, read: Callable[[], Optional[bytes]]) -> None:
        data = read()
        if data is None:
            return
        if len(data) > self._max_bytes:
            self._client.set_tag(run.run_id, "checkpoint_artifact",
                                 f"not logged: {len(data) / 1e6:.1f} MB is over the "
                                 f"{self._max_bytes / 1e6:g} MB cap (tracking.mlflow_artifact_max_mb)")
            return
        with tempfile.TemporaryDirectory(prefix="rnn-mlflow-") as tmp:
            path = Path(tmp, "best.pt")
            path.write_bytes(data)
            self._client.log_artifact(run.run_id, str(path), "checkpoint")


def _canonical(uri: str) -> str:
    """A relative ``sqlite:///`` path made absolute, so the URI names one database wherever the
    driver runs from (the job folder keys its run by it)."""
    path = sqlite_path(uri)
    if path is None or os.path.isabs(path):
        return uri
    return "sqlite:///" + os.path.abspath(path)


def _parse(text: Optional[str]) -> dict[str, Any]:
    try:
        state = json.loads(text) if text else {}
    except ValueError:
        log.warning("mlflow: tracking.json in the job folder is not JSON; its runs are made again")
        state = {}
    return state if isinstance(state, dict) else {}


def _text(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE - 3] + "..."
