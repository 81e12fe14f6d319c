"""MLflow: one run per job, with one nested run per trial, named by its trial id.

The job's run id is kept in the job folder (``tracking.json``, by tracking URI), so a resumed job
(or an ``export`` to the same URI) finds the same runs: its trials' runs are the job run's
children (``mlflow.parentRunId``), found with one search when the sink opens. A trial's run gets
its config as params, its swept values and ``trial_id`` as tags, each evaluation's metrics at
their step, then its final metrics, its ``status`` tag and its best checkpoint as an artifact
(under ``checkpoint/``, up to ``artifact_max_mb``; over it, a ``checkpoint_artifact`` tag says why
not). The job's run gets the report's files at the end. Metrics already in a run (per key, by
step) are not logged again.

What the sink is told is buffered, per run, until :meth:`MlflowSink.flush` (the tracker calls it
about once a second), then written to the store: through a server, MLflow's client writes a
trial's whole run in one ``log_batch`` and one update (:mod:`~orchestrator.track.mlflow_store`);
into a database, every run with something new goes in one transaction, and MLflow is not imported
at all (:mod:`~orchestrator.track.mlflow_db`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from orchestrator.spec.tracking import is_server, sqlite_path
from orchestrator.track.mlflow_store import MAX_PARAM, MAX_TAG, ClientStore, RunStore, Writes
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


def set_client_defaults() -> None:
    """:data:`CLIENT_DEFAULTS` into this process's environment, where not set already. MLflow reads
    some when it is imported (its telemetry client starts then), so this runs when this module is
    imported: the trackers' process imports it before MLflow (``sink_modules``)."""
    for key, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)


set_client_defaults()


@dataclass
class _Run:
    run_id: str
    status: str  # as the store will have it once what is buffered is written
    artifact_uri: str
    steps: Optional[dict[str, int]] = None  # the last step of each metric key, read on first use
    status_tag: Optional[str] = None  # the trial's status as the run's ``status`` tag says


class MlflowSink:
    """Writes a job's trials to the MLflow tracking store at ``uri`` (see the module docstring).

    ``state``: reads and writes the job folder's ``tracking.json`` text (None: absent).
    ``direct``: read and write a database's tables directly (default: for a database URI, not a
    server's), else through MLflow's client.
    """

    name = "mlflow"

    def __init__(self, uri: str, experiment: str, job_name: str, job_dir: str,
                 state: tuple[Callable[[], Optional[str]], Callable[[str], Any]], artifact_max_mb: float,
                 direct: Optional[bool] = None) -> None:
        set_client_defaults()  # again: a variable removed since the import
        # MLflow logs its own INFO lines ("View run ... at", database set-up) through a handler of its
        # own, and urllib3 one line per retry: the driver's log says once what went wrong (Tracker).
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        self.uri = _canonical(uri)
        if direct is None:
            direct = not is_server(self.uri)
        if direct:
            from orchestrator.track.mlflow_db import DbStore

            self._store: RunStore = DbStore(self.uri)
        else:
            self._store = ClientStore(self.uri)
        self._job_dir = job_dir
        self._max_bytes = int(artifact_max_mb * 1_000_000)
        self._experiment_id = self._experiment(experiment)
        self._job_run, self._job_artifacts = self._job(job_name, *state)
        self._runs = self._children()
        self._writes: dict[str, Writes] = {}  # by run id: what the next flush writes

    # --- what a tracker calls -------------------------------------------------------------

    def log(self, view: TrialView, points: list[Point], tags: Optional[dict[str, str]] = None) -> None:
        """The points' metrics at steps the run does not have yet (and ``tags``), at the next flush."""
        run = self._run(view)
        steps = self._steps(run)
        writes = self._pending(run)
        added = False
        for point in sorted(points, key=lambda p: p.step):
            stamp = int(point.wall_time * 1000)
            for key, value in point.metrics.items():
                if point.step > steps.get(key, -1):
                    writes.metrics.append((key, value, stamp, point.step))
                    steps[key] = point.step
                    added = True
        if added and run.status in _TERMINAL:  # a failed trial run again: its run goes on
            writes.status = ("RUNNING", None)
            run.status = "RUNNING"
        writes.tags.update({k: _text(v, MAX_TAG) for k, v in (tags or {}).items()})

    def holds(self, trial_id: str, status: str) -> bool:
        """Whether the trial's run has ended with this status (so it has everything)."""
        run = self._runs.get(trial_id)
        return run is not None and run.status in _TERMINAL and run.status_tag == status

    def end(self, view: TrialView, end: Optional[TrialEnd]) -> None:
        run = self._run(view)
        if end is None:  # paused at a rung: the run stays open for its promotion
            self._pending(run).tags["status"] = "paused"
            return
        self.log(view, [Point(end.step, end.metrics, time.time())], {"status": end.status})
        run.status_tag = end.status
        if run.status in _TERMINAL:
            return  # ended before with its artifact (a resumed job, an export run twice)
        if end.checkpoint is not None and self._max_bytes > 0:
            self._log_checkpoint(run, end.checkpoint)
        status = "FINISHED" if end.succeeded else ("KILLED" if end.status == "timeout" else "FAILED")
        self._pending(run).status = (status, int(time.time() * 1000))
        run.status = status

    def flush(self) -> None:
        """Write what is buffered (the tracker calls this about once a second, and before closing)."""
        writes = [w for w in self._writes.values() if w.create or w.params or w.metrics or w.tags or w.status]
        self._writes = {}
        self._store.write(writes)

    def finish(self, report_files: list[Path]) -> None:
        """What is buffered, then the report's files to the job's run, which is then finished."""
        self.flush()
        for path in report_files:
            if path.is_file() and path.stat().st_size <= self._max_bytes:
                self._put_artifact(self._job_artifacts, "report", path.name, path)
        self._store.write([Writes(self._job_run, status=("FINISHED", int(time.time() * 1000)))])

    def close(self) -> None:
        """Let go of the database's connections (what is still buffered is dropped: flush first)."""
        self._store.close()

    # --- pieces ---------------------------------------------------------------------------

    def _experiment(self, name: str) -> str:
        """The experiment's id (made if need be)."""
        found = self._store.experiment(name)
        if found is None:
            db = sqlite_path(self.uri)
            # a local database keeps its artifacts beside it, not in the driver's working directory
            location = Path(os.path.abspath(db)).parent.joinpath("mlartifacts").as_uri() if db else None
            error: Optional[Exception] = None
            try:
                self._store.create_experiment(name, location)
            except Exception as e:  # noqa: BLE001  (created meanwhile by another job: use it)
                error = e
            found = self._store.experiment(name)
            if found is None:
                raise error or RuntimeError(f"the MLflow experiment {name!r} is not in {self.uri} once made")
        if found.deleted:
            raise RuntimeError(f"the MLflow experiment {name!r} is deleted; restore it or name another "
                               "(tracking.mlflow_experiment)")
        return found.experiment_id

    def _job(self, job_name: str, read: Callable[[], Optional[str]], write: Callable[[str], Any]) -> tuple[str, str]:
        """The job's run and its artifact URI: the run ``tracking.json`` names for this URI if it
        still exists, else a new one."""
        state = _parse(read())
        known = state.setdefault("mlflow", {}).get(self.uri)
        if isinstance(known, dict) and isinstance(known.get("run_id"), str):
            run = self._store.run(known["run_id"])
            if run is not None and not run.deleted:
                if run.status in _TERMINAL:
                    self._store.write([Writes(run.run_id, status=("RUNNING", None))])
                return run.run_id, run.artifact_uri
            log.info("mlflow: the job's run %s is not in %s; starting a new one", known["run_id"], self.uri)
        tags = {"job_dir": self._job_dir, "rnn.role": "job"}
        start = int(time.time() * 1000)
        run_id, artifact_uri, later = self._store.create(self._experiment_id, job_name, tags, start)
        if later:
            self._store.write([Writes(run_id, create=(job_name, tags, start))])
        state["mlflow"][self.uri] = {"experiment_id": self._experiment_id, "run_id": run_id}
        write(json.dumps(state, indent=2, sort_keys=True) + "\n")
        return run_id, artifact_uri

    def _children(self) -> dict[str, _Run]:
        runs: dict[str, _Run] = {}
        for run in self._store.trial_runs(self._experiment_id, self._job_run):
            tid = run.tags.get("trial_id")
            if tid and tid not in runs:
                runs[tid] = _Run(run.run_id, run.status, run.artifact_uri, status_tag=run.tags.get("status"))
        return runs

    def _run(self, view: TrialView) -> _Run:
        run = self._runs.get(view.trial_id)
        if run is not None:
            return run
        tags = {k: _text(v, MAX_TAG) for k, v in {**view.tags, "mlflow.parentRunId": self._job_run,
                                                   "trial_id": view.trial_id, "job_dir": self._job_dir}.items()}
        start = int(time.time() * 1000)
        run_id, artifact_uri, later = self._store.create(self._experiment_id, view.trial_id, tags, start)
        run = self._runs[view.trial_id] = _Run(run_id, "RUNNING", artifact_uri, steps={})
        writes = self._pending(run)
        writes.create = (view.trial_id, tags, start) if later else None
        writes.params = [(k, _text(v, MAX_PARAM)) for k, v in view.params.items()]
        return run

    def _pending(self, run: _Run) -> Writes:
        writes = self._writes.get(run.run_id)
        if writes is None:
            writes = self._writes[run.run_id] = Writes(run.run_id)
        return writes

    def _steps(self, run: _Run) -> dict[str, int]:
        if run.steps is None:  # a run an earlier driver made: what it has, per key
            run.steps = self._store.last_steps(run.run_id, (*EVAL_METRICS, *FINAL_METRICS))
        return run.steps

    def _log_checkpoint(self, run: _Run, read: Callable[[], Optional[bytes]]) -> None:
        data = read()
        if data is None:
            return
        if len(data) > self._max_bytes:
            self._pending(run).tags["checkpoint_artifact"] = (
                f"not logged: {len(data) / 1e6:.1f} MB is over the "
                f"{self._max_bytes / 1e6:g} MB cap (tracking.mlflow_artifact_max_mb)")
            return
        self._put_artifact(run.artifact_uri, "checkpoint", "best.pt", data)

    def _put_artifact(self, artifact_uri: str, folder: str, name: str, data: bytes | Path) -> None:
        """``data`` (bytes, or a file's) as the artifact ``folder/name`` of a run: in place for a
        local store (a database's default), else through MLflow's artifact store for the URI."""
        if artifact_uri.startswith("file:"):
            target = Path(urllib.request.url2pathname(urllib.parse.urlparse(artifact_uri).path), folder)
            os.makedirs(target, exist_ok=True)  # checks the parents before making them: no failed mkdir calls
            part = target / f".{name}.part"  # renamed once whole, as MLflow's local store does
            if isinstance(data, bytes):
                part.write_bytes(data)
            else:
                shutil.copyfile(data, part)
            os.replace(part, target / name)
            return
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        # the run's artifact store, as MlflowClient.log_artifact finds it (without reading the run)
        repo = get_artifact_repository(artifact_uri, tracking_uri=self.uri)
        with tempfile.TemporaryDirectory(prefix="rnn-mlflow-") as tmp:
            path = data if isinstance(data, Path) else Path(tmp, name)
            if isinstance(data, bytes):
                path.write_bytes(data)
            repo.log_artifact(str(path), folder)


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


def _text(value: Any, limit: int) -> str:
    text = "null" if value is None else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
