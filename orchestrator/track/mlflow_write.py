"""How :class:`~orchestrator.track.mlflow_sink.MlflowSink` writes what it has buffered: through
MLflow's client (a tracking server), or straight into a tracking database's tables.

MLflow's client costs a database about 4 ms of the caller's CPU per call (an ORM session, a read
of the run, a commit, several for ``log_batch``), and a trial needs at least three (create, log,
end): 24 ms a trial, as much as a fast sweep's whole driver. For a database URI the sink writes
instead what those calls would (the ``runs``, ``tags``, ``params``, ``metrics`` and
``latest_metrics`` rows, MLflow's own table definitions) for every run with something new, in one
transaction per flush. MLflow's client checks, when the sink opens it, that the database's schema
is the installed MLflow's; the sink's tests read every run back with MLflow's client and compare
it with what the client itself writes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

#: MLflow's limits: a ``log_batch`` call, a param's and a tag's value.
PARAMS_PER_BATCH, METRICS_PER_BATCH, TAGS_PER_BATCH = 100, 1000, 100
MAX_PARAM, MAX_TAG = 6000, 8000
_IN_CHUNK = 500  # run ids per ``IN (...)``: well under any database's limit on bound parameters


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


class ClientWriter:
    """Through ``MlflowClient`` (a tracking server): per run, ``log_batch`` calls and an update."""

    def __init__(self, client: Any) -> None:
        self._client = client

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


class SqlWriter:
    """Into a tracking database's tables (MLflow's SQLAlchemy models), every run in one transaction."""

    def __init__(self, uri: str, experiment_id: str, artifact_location: str) -> None:
        import sqlalchemy

        self._engine = sqlalchemy.create_engine(uri)
        if uri.lower().startswith("sqlite:"):
            sqlalchemy.event.listen(self._engine, "connect", _sqlite_pragmas)
        self._experiment_id = int(experiment_id)
        self._artifact_location = artifact_location

    def create(self, experiment_id: str, name: str, tags: dict[str, str], start_ms: int) -> tuple[str, str, bool]:
        run_id = uuid.uuid4().hex  # as MLflow's store names a run
        return run_id, append_uri(self._artifact_location, run_id), True

    def write(self, runs: list[Writes]) -> None:
        """One transaction: new runs with their tags; then, for every run, tags (replaced), params,
        metrics, the latest value of each metric (as MLflow keeps it for searches), and status."""
        if not runs:
            return
        import sqlalchemy as sa
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

        t_runs, t_tags, t_params = SqlRun.__table__, SqlTag.__table__, SqlParam.__table__
        t_metrics, t_latest = SqlMetric.__table__, SqlLatestMetric.__table__
        new = {w.run_id for w in runs if w.create is not None}
        run_rows: list[dict[str, Any]] = []
        tag_rows: list[dict[str, Any]] = []
        old_tags: list[dict[str, Any]] = []
        param_rows: list[dict[str, Any]] = []
        metric_rows: list[dict[str, Any]] = []
        for w in runs:
            tags = dict(w.tags)
            if w.create is not None:
                name, created_tags, start_ms = w.create
                tags = {**created_tags, "mlflow.runName": name, **tags}
                run_rows.append(dict(run_uuid=w.run_id, name=name, source_type="UNKNOWN", source_name="",
                                     entry_point_name="", user_id="unknown", status="RUNNING", start_time=start_ms,
                                     end_time=None, deleted_time=None, source_version="", lifecycle_stage="active",
                                     artifact_uri=append_uri(self._artifact_location, w.run_id),
                                     experiment_id=self._experiment_id))
            else:
                old_tags.extend({"r": w.run_id, "k": k} for k in tags)
            tag_rows.extend({"run_uuid": w.run_id, "key": k, "value": v} for k, v in tags.items())
            param_rows.extend({"run_uuid": w.run_id, "key": k, "value": v} for k, v in w.params)
            seen = set()
            for key, value, stamp, step in w.metrics:
                is_nan, value = sanitize(value)
                if (key, stamp, step, value, is_nan) not in seen:
                    seen.add((key, stamp, step, value, is_nan))
                    metric_rows.append({"run_uuid": w.run_id, "key": key, "value": value, "timestamp": stamp,
                                        "step": step, "is_nan": is_nan})
        with self._engine.begin() as conn:
            if run_rows:
                conn.execute(sa.insert(t_runs), run_rows)
            if old_tags:
                conn.execute(sa.delete(t_tags).where(t_tags.c.run_uuid == sa.bindparam("r"),
                                                     t_tags.c.key == sa.bindparam("k")), old_tags)
            if tag_rows:
                conn.execute(sa.insert(t_tags), tag_rows)
            if param_rows:
                conn.execute(sa.insert(t_params), param_rows)
            if metric_rows:
                conn.execute(sa.insert(t_metrics), metric_rows)
                self._latest(conn, sa, t_latest, metric_rows, new)
            for with_end in (False, True):
                rows = [{"r": w.run_id, "s": w.status[0], "e": w.status[1]} for w in runs
                        if w.status is not None and (w.status[1] is not None) == with_end]
                if rows:
                    values: dict[str, Any] = {"status": sa.bindparam("s")}
                    if with_end:
                        values["end_time"] = sa.bindparam("e")
                    conn.execute(sa.update(t_runs).where(t_runs.c.run_uuid == sa.bindparam("r")).values(**values),
                                 [r if with_end else {"r": r["r"], "s": r["s"]} for r in rows])

    @staticmethod
    def _latest(conn: Any, sa: Any, table: Any, metric_rows: list[dict[str, Any]], new: set[str]) -> None:
        """``latest_metrics``: per run and key, the most recent by (step, timestamp, value), as MLflow's store."""
        best: dict[tuple[str, str], dict[str, Any]] = {}
        for row in metric_rows:
            k = (row["run_uuid"], row["key"])
            if k not in best or _order(row) > _order(best[k]):
                best[k] = row
        older = sorted({r for r, _ in best} - new)
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for chunk in _chunks(older):
            for row in conn.execute(sa.select(table).where(table.c.run_uuid.in_(chunk))).mappings():
                current[(row["run_uuid"], row["key"])] = dict(row)
        changed = [row for k, row in best.items() if k not in current or _order(row) > _order(current[k])]
        stale = [{"r": r["run_uuid"], "k": r["key"]} for r in changed if (r["run_uuid"], r["key"]) in current]
        if stale:
            conn.execute(sa.delete(table).where(table.c.run_uuid == sa.bindparam("r"),
                                                table.c.key == sa.bindparam("k")), stale)
        if changed:
            conn.execute(sa.insert(table), changed)

    def close(self) -> None:
        self._engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """As MLflow's store sets them on each session: foreign keys checked, 20 s of waiting for a lock."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA busy_timeout = 20000")
    cursor.close()


def append_uri(location: str, run_id: str) -> str:
    from mlflow.utils.uri import append_to_uri_path

    return str(append_to_uri_path(location, run_id, "artifacts"))


def sanitize(value: float) -> tuple[bool, float]:
    """(is NaN, the value a database holds): MLflow's store keeps NaN as 0 and flags it, and
    +-inf as the largest finite float."""
    if math.isnan(value):
        return True, 0.0
    if math.isinf(value):
        return False, math.copysign(1.7976931348623157e308, value)
    return False, value


def _order(row: dict[str, Any]) -> tuple[int, int, float]:
    return row["step"], row["timestamp"], row["value"]


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i:i + _IN_CHUNK]
