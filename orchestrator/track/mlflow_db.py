"""An MLflow tracking database read and written with SQLAlchemy, without importing MLflow.

MLflow's client costs a database about 4 ms of the caller's CPU per call (an ORM session, a read
of the run, a commit, several for ``log_batch``), and a trial needs at least three (create, log,
end): 24 ms a trial, as much as a fast sweep's whole driver. And importing MLflow with its
database store is about 2 s of CPU, half of what a tracked 2,000-trial sweep's trackers cost. So
for a database URI :class:`DbStore` reads the few things the sink asks and writes what those calls
would (the ``runs``, ``tags``, ``params``, ``metrics`` and ``latest_metrics`` rows, one
``experiments`` row for a new experiment) for every run with something new, in one transaction
per flush.

It does so only on a database whose schema is the installed MLflow's: its ``alembic_version`` is
the head of the migrations MLflow ships (read from their files, not imported). A database that is
new, or of another MLflow, is first opened by MLflow's own store, which makes its tables, or
refuses it with MLflow's own advice (``mlflow db upgrade``). The tables' columns are read from the
database itself. The sink's tests read every run back with MLflow's client and compare it with
what the client itself writes.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import logging
import os
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional

from orchestrator.spec.tracking import sqlite_path
from orchestrator.track.mlflow_store import ClientStore, Experiment, StoredRun, Writes, append_uri, sanitize

log = logging.getLogger(__name__)

_TABLES = ("experiments", "runs", "tags", "params", "metrics", "latest_metrics")
_KEYED = ("run_uuid", "key", "value")  # tags' and params' columns, in the rows' order
_METRIC = ("run_uuid", "key", "value", "timestamp", "step", "is_nan")  # metrics' and latest_metrics'
_RUN = ("run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status", "start_time",
        "end_time", "deleted_time", "source_version", "lifecycle_stage", "artifact_uri", "experiment_id")
_IN_CHUNK = 500  # run ids per ``IN (...)``: well under any database's limit on bound parameters
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


def schema_head() -> Optional[str]:
    """The schema revision the installed MLflow expects of a database (the one head of its alembic
    migrations), read from the migrations' files; None where they cannot be read."""
    return _migrations()[0]


@functools.lru_cache(maxsize=1)
def _migrations() -> tuple[Optional[str], frozenset[str]]:
    """The installed MLflow's schema head and every revision its migrations know."""
    spec = importlib.util.find_spec("mlflow")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None, frozenset()
    folder = Path(next(iter(spec.submodule_search_locations)), "store", "db_migrations", "versions")
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        for file in folder.glob("*.py"):
            for name, value in _REVISION.findall(file.read_text(encoding="utf-8")):
                found = ast.literal_eval(value.strip())
                found = found if isinstance(found, (tuple, list)) else (found,)
                (revisions if name == "revision" else parents).update(str(v) for v in found if v)
    except (OSError, ValueError, SyntaxError):
        return None, frozenset()
    heads = revisions - parents
    return (heads.pop() if len(heads) == 1 else None), frozenset(revisions)


class DbStore:
    """A tracking database's tables (see the module docstring), every flush in one transaction."""

    def __init__(self, uri: str) -> None:
        import sqlalchemy as sa

        self._sa = sa
        self._uri = uri
        self._engine = sa.create_engine(uri)
        db = sqlite_path(uri)
        if db is not None:
            os.makedirs(os.path.dirname(os.path.abspath(db)), exist_ok=True)  # as MLflow's store does
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
        version = self._version()
        if version is None or version != schema_head():
            self._made_by_mlflow(version)
        meta = sa.MetaData()
        meta.reflect(self._engine, only=_TABLES)
        self._t = meta.tables
        self._locations: dict[str, str] = {}  # experiment id: its artifact location
        self._made: dict[str, tuple[int, str]] = {}  # runs made, not yet written: experiment id, artifact URI
        self._run_columns = tuple(c for c in _RUN if c in self._t["runs"].c)  # deleted_time: not in every schema
        self._inserts: dict[tuple[str, tuple[str, ...]], tuple[str, Optional[tuple[int, ...]]]] = {}

    # --- questions ------------------------------------------------------------------------

    def experiment(self, name: str) -> Optional[Experiment]:
        t = self._t["experiments"]
        query = self._sa.select(t.c.experiment_id, t.c.artifact_location, t.c.lifecycle_stage).where(t.c.name == name)
        if "workspace" in t.c:  # MLflow 3.x's workspaces: a plain client sees the default one
            query = query.where(t.c.workspace == "default")
        with self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        self._locations[str(row.experiment_id)] = str(row.artifact_location)
        return Experiment(str(row.experiment_id), str(row.artifact_location), row.lifecycle_stage == "deleted")

    def create_experiment(self, name: str, artifact_location: Optional[str]) -> None:
        """A new experiment. Without ``artifact_location``, MLflow's client makes it: where MLflow puts
        a database's artifacts by default (``./mlruns`` under the working directory) is its own rule."""
        if artifact_location is None:
            ClientStore(self._uri).create_experiment(name, None)
            return
        now = int(time.time() * 1000)
        with self._engine.begin() as conn:
            conn.execute(self._sa.insert(self._t["experiments"]),
                         dict(name=name, artifact_location=artifact_location, lifecycle_stage="active",
                              creation_time=now, last_update_time=now))

    def run(self, run_id: str) -> Optional[StoredRun]:
        t = self._t["runs"]
        with self._engine.connect() as conn:
            row = conn.execute(self._sa.select(t.c.status, t.c.artifact_uri, t.c.lifecycle_stage)
                               .where(t.c.run_uuid == run_id)).first()
        if row is None:
            return None
        return StoredRun(run_id, row.status, row.artifact_uri, row.lifecycle_stage == "deleted")

    def trial_runs(self, experiment_id: str, parent_run_id: str) -> list[StoredRun]:
        """The parent's live child runs, the latest started first (as MLflow's search orders them)."""
        sa, runs, tags = self._sa, self._t["runs"], self._t["tags"]
        parent = tags.alias("parent")
        query = (sa.select(runs.c.run_uuid, runs.c.status, runs.c.artifact_uri)
                 .join(parent, parent.c.run_uuid == runs.c.run_uuid)
                 .where(parent.c.key == "mlflow.parentRunId", parent.c.value == parent_run_id,
                        runs.c.experiment_id == int(experiment_id), runs.c.lifecycle_stage == "active")
                 .order_by(runs.c.start_time.desc(), runs.c.run_uuid))
        with self._engine.connect() as conn:
            found = conn.execute(query).all()
            wanted: dict[str, dict[str, str]] = {row.run_uuid: {} for row in found}
            for chunk in _chunks(list(wanted)):
                for r, k, v in conn.execute(sa.select(tags.c.run_uuid, tags.c.key, tags.c.value)
                                            .where(tags.c.run_uuid.in_(chunk), tags.c.key.in_(("trial_id", "status")))):
                    wanted[r][k] = v
        return [StoredRun(row.run_uuid, row.status, row.artifact_uri, False, wanted[row.run_uuid]) for row in found]

    def last_steps(self, run_id: str, keys: tuple[str, ...]) -> dict[str, int]:
        t = self._t["metrics"]
        with self._engine.connect() as conn:
            rows = conn.execute(self._sa.select(t.c.key, self._sa.func.max(t.c.step))
                                .where(t.c.run_uuid == run_id, t.c.key.in_(keys)).group_by(t.c.key))
            return {key: int(step) for key, step in rows}

    # --- writes ---------------------------------------------------------------------------

    def create(self, experiment_id: str, name: str, tags: dict[str, str], start_ms: int) -> tuple[str, str, bool]:
        """A new run's id and artifact URI; True: ``write`` makes it."""
        run_id = uuid.uuid4().hex  # as MLflow's store names a run
        artifact_uri = append_uri(self._location(experiment_id), run_id, "artifacts")
        self._made[run_id] = (int(experiment_id), artifact_uri)
        return run_id, artifact_uri, True

    def write(self, runs: list[Writes]) -> None:
        """One transaction: new runs with their tags; then, for every run, tags (replaced), params,
        metrics, the latest value of each metric (as MLflow keeps it for searches), and status."""
        if not runs:
            return
        sa, t = self._sa, self._t
        new = {w.run_id for w in runs if w.create is not None}
        run_rows: list[tuple[Any, ...]] = []
        tag_rows: list[tuple[str, str, str]] = []
        old_tags: list[dict[str, Any]] = []
        param_rows: list[tuple[str, str, str]] = []
        metric_rows: list[tuple[str, str, float, int, int, bool]] = []
        for w in runs:
            r = w.run_id
            tags = w.tags
            if w.create is not None:
                run_rows.append(self._run_row(w))
                name, created_tags, _ = w.create
                tags = {**created_tags, "mlflow.runName": name, **tags}
            else:
                old_tags.extend({"r": r, "k": k} for k in tags)
            tag_rows.extend((r, k, v) for k, v in tags.items())
            param_rows.extend((r, k, v) for k, v in w.params)
            seen = set()
            for key, value, stamp, step in w.metrics:
                is_nan, value = sanitize(value)
                row = (r, key, value, stamp, step, is_nan)
                if row not in seen:
                    seen.add(row)
                    metric_rows.append(row)
        with self._engine.begin() as conn:
            self._insert(conn, "runs", self._run_columns, run_rows)
            if old_tags:
                conn.execute(sa.delete(t["tags"]).where(t["tags"].c.run_uuid == sa.bindparam("r"),
                                                        t["tags"].c.key == sa.bindparam("k")), old_tags)
            self._insert(conn, "tags", _KEYED, tag_rows)
            self._insert(conn, "params", _KEYED, param_rows)
            if metric_rows:
                self._insert(conn, "metrics", _METRIC, metric_rows)
                self._latest(conn, metric_rows, new)
            self._statuses(conn, runs)

    def _insert(self, conn: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Rows (values in ``columns``' order) into a table with the driver's ``executemany``: with
        SQLAlchemy's own, its work per row of a compiled statement was a third of a flush's CPU."""
        if not rows:
            return
        found = self._inserts.get((table, columns))
        if found is None:
            compiled = self._sa.insert(self._t[table]).compile(dialect=self._engine.dialect, column_keys=list(columns))
            names = compiled.positiontup  # the binds' names in the statement, for a positional paramstyle
            found = self._inserts[(table, columns)] = (str(compiled), None if names is None else
                                                       tuple(columns.index(name) for name in names))
        statement, positions = found
        if positions is None:  # a named paramstyle
            conn.exec_driver_sql(statement, [dict(zip(columns, row, strict=True)) for row in rows])
        elif positions == tuple(range(len(columns))):
            conn.exec_driver_sql(statement, rows)
        else:
            conn.exec_driver_sql(statement, [tuple(row[i] for i in positions) for row in rows])

    def close(self) -> None:
        self._engine.dispose()

    # --- pieces ---------------------------------------------------------------------------

    def _version(self) -> Optional[str]:
        sa = self._sa
        with self._engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            row = conn.execute(sa.text("SELECT version_num FROM alembic_version")).first()
        return None if row is None else str(row[0])

    def _made_by_mlflow(self, version: Optional[str]) -> None:
        """MLflow's own store opens the database: it makes a new one's tables, or refuses one of
        another schema, saying what to do (raises). Imports MLflow (about 2 s of CPU)."""
        from mlflow import MlflowClient

        log.info("mlflow: the database's schema is %s, the installed MLflow's %s: opening it with MLflow",
                 version or "not made", schema_head() or "unknown")
        MlflowClient(tracking_uri=self._uri).search_experiments(max_results=1)
        now = self._version()
        head, known = _migrations()
        if head is not None and now != head:
            advice = ("take a backup of it, then run 'mlflow db upgrade <database_uri>'" if now in known else
                      "it was made by a newer MLflow: install that one here")
            raise RuntimeError(f"the MLflow database's schema is {now}, not the installed MLflow's {head}: {advice}")

    def _location(self, experiment_id: str) -> str:
        if experiment_id not in self._locations:
            t = self._t["experiments"]
            with self._engine.connect() as conn:
                self._locations[experiment_id] = str(conn.execute(
                    self._sa.select(t.c.artifact_location).where(t.c.experiment_id == int(experiment_id))).scalar_one())
        return self._locations[experiment_id]

    def _run_row(self, w: Writes) -> tuple[Any, ...]:
        assert w.create is not None
        name, _, start_ms = w.create
        experiment_id, artifact_uri = self._made.pop(w.run_id)
        values = dict(run_uuid=w.run_id, name=name, source_type="UNKNOWN", source_name="", entry_point_name="",
                      user_id="unknown", status="RUNNING", start_time=start_ms, end_time=None, deleted_time=None,
                      source_version="", lifecycle_stage="active", artifact_uri=artifact_uri,
                      experiment_id=experiment_id)
        return tuple(values[c] for c in self._run_columns)

    def _latest(self, conn: Any, metric_rows: list[tuple[str, str, float, int, int, bool]], new: set[str]) -> None:
        """``latest_metrics``: per run and key, the most recent by (step, timestamp, value), as MLflow's store."""
        sa, table = self._sa, self._t["latest_metrics"]
        best: dict[tuple[str, str], tuple[str, str, float, int, int, bool]] = {}
        for row in metric_rows:
            k = (row[0], row[1])
            if k not in best or _order(row) > _order(best[k]):
                best[k] = row
        older = sorted({r for r, _ in best} - new)
        current: dict[tuple[str, str], tuple[int, int, float]] = {}
        for chunk in _chunks(older):
            for r, key, value, stamp, step in conn.execute(
                    sa.select(table.c.run_uuid, table.c.key, table.c.value, table.c.timestamp, table.c.step)
                    .where(table.c.run_uuid.in_(chunk))):
                current[(r, key)] = (step, stamp, value)
        changed = [row for k, row in best.items() if k not in current or _order(row) > current[k]]
        stale = [{"r": row[0], "k": row[1]} for row in changed if (row[0], row[1]) in current]
        if stale:
            conn.execute(sa.delete(table).where(table.c.run_uuid == sa.bindparam("r"),
                                                table.c.key == sa.bindparam("k")), stale)
        self._insert(conn, "latest_metrics", _METRIC, changed)

    def _statuses(self, conn: Any, runs: list[Writes]) -> None:
        sa, t = self._sa, self._t["runs"]
        for with_end in (False, True):
            rows = [{"r": w.run_id, "s": w.status[0], "e": w.status[1]} for w in runs
                    if w.status is not None and (w.status[1] is not None) == with_end]
            if rows:
                values: dict[str, Any] = {"status": sa.bindparam("s")}
                if with_end:
                    values["end_time"] = sa.bindparam("e")
                conn.execute(sa.update(t).where(t.c.run_uuid == sa.bindparam("r")).values(**values),
                             [r if with_end else {"r": r["r"], "s": r["s"]} for r in rows])


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """As MLflow's store sets them on each session: foreign keys checked, 20 s of waiting for a lock."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA busy_timeout = 20000")
    cursor.close()


def _order(row: tuple[str, str, float, int, int, bool]) -> tuple[int, int, float]:
    """A metric row's place in time: step, then timestamp, then value (as MLflow's store orders them)."""
    return row[4], row[3], row[2]


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), _IN_CHUNK):
        yield items[i:i + _IN_CHUNK]
