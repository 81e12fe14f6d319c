"""Results of a job: the tables of one job folder, and the rows a run writes to them.

A job folder ``<output>/<name>/`` holds::

    trials.parquet       one row per trial, upserted as each trial ends
    evals.parquet        one row per evaluation (``rnn.events.EvalRecord``)
    throughput.parquet   one row per (trial, batch size), for ``kind: throughput``
    manifest.json        the spec as submitted, corpus hashes, versions, host, devices, git commit
    checkpoints/<trial_id>/best.pt
    report.md, report.html
    .lock                held by the run that is writing (see :class:`JobLock`)

Every file is written atomically (a temporary file in the same folder, then a rename), so
a kill at any moment leaves the previous good version. ``job_dir`` may be a local path or
a pyarrow filesystem URI (``file:///...``; other filesystems work where pyarrow supports
them, but only local folders can be locked).

This module holds :class:`ResultsStore`, :func:`fresh_start` and :func:`trial_row`; the
package's public names are in :mod:`orchestrator.results`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from orchestrator.results.lock import JobLock
from orchestrator.results.storage import ResultsError, Storage, open_storage
from orchestrator.results.tables import (
    EVAL_SCHEMA,
    TERMINAL_STATUSES,
    THROUGHPUT_FIXED,
    TRIAL_FIXED,
    build_table,
    enum_value,
    eval_rows,
    normalize_trial_row,
    throughput_rows,
)
from rnn.events import TrialStatus

__all__ = ["ResultsStore", "fresh_start", "trial_row"]

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.parquet"
EVALS_FILE = "evals.parquet"
THROUGHPUT_FILE = "throughput.parquet"

_MUTEXES: dict[str, threading.Lock] = {}
_MUTEXES_GUARD = threading.Lock()


class ResultsStore:
    """Read and write one job's tables. Writes are atomic; concurrent runs need :class:`JobLock`.

    ``filesystem`` (optional) is a ``pyarrow.fs.FileSystem`` on which ``job_dir`` is a path;
    without it ``job_dir`` is a local path or a URI. Nothing is created until the first write.
    """

    def __init__(self, job_dir: str | os.PathLike[str], filesystem: Any = None) -> None:
        self._storage: Storage = open_storage(job_dir, filesystem)
        # Upserts read-modify-write a whole file: serialise them across every store on this
        # folder in the process (across processes, JobLock keeps a second run out).
        with _MUTEXES_GUARD:
            self._mutex = _MUTEXES.setdefault(self._storage.root, threading.Lock())

    @property
    def job_dir(self) -> str:
        """The job folder (a local path, or a path on the store's filesystem)."""
        return self._storage.root

    @property
    def is_local(self) -> bool:
        """True for a local job folder (checkpoints can be written by path, the folder locked)."""
        return self._storage.is_local

    def location(self, relpath: str) -> str:
        """Where ``relpath`` (relative to the job folder) lives."""
        return self._storage.location(relpath)

    # --- trials ---------------------------------------------------------------------------

    def upsert_trial(self, row: Mapping[str, Any]) -> None:
        """Insert or replace the row of ``row["trial_id"]``.

        ``row`` holds fixed columns (:data:`TRIAL_FIXED`), plus the trial config either as a
        nested ``"config"`` mapping or as already-flattened dotted keys (``"model.cell"``).
        An unknown non-dotted key is refused, so a misspelt column fails here, not in a report.
        """
        new = normalize_trial_row(row)
        with self._mutex:
            old = self.read_trials()
            rows = old.to_pylist()
            ids = [r["trial_id"] for r in rows]
            if new["trial_id"] in ids:  # keep the trial's place so the table reads in run order
                at = ids.index(new["trial_id"])
                rows = [r for r in rows if r["trial_id"] != new["trial_id"]]
                rows.insert(at, new)
            else:
                rows.append(new)
            self._write_table(TRIALS_FILE, build_table(TRIAL_FIXED, rows, old.schema))

    def read_trials(self) -> pa.Table:
        """All trial rows (an empty table with the fixed schema before the first write)."""
        return self._read_table(TRIALS_FILE, TRIAL_FIXED, exact=False)

    def finished_trial_ids(self, statuses: Iterable[str] = TERMINAL_STATUSES) -> set[str]:
        """Ids of trials whose status is in ``statuses`` (the dispatcher skips these on resume)."""
        wanted = {s.value if isinstance(s, TrialStatus) else str(s) for s in statuses}
        table = self.read_trials()
        return {
            tid
            for tid, status in zip(table["trial_id"].to_pylist(), table["status"].to_pylist(), strict=True)
            if status in wanted
        }

    # --- evaluations ----------------------------------------------------------------------

    def replace_evals(self, trial_id: str, rows: Iterable[Any]) -> None:
        """Replace every evaluation row of ``trial_id`` with ``rows``.

        ``rows`` are ``EvalRecord`` objects or mappings with exactly its fields. A retried
        trial writes its full history again, so nothing is duplicated.
        """
        new = pa.Table.from_pylist(eval_rows(trial_id, rows), schema=EVAL_SCHEMA)
        with self._mutex:
            old = self.read_evals()
            kept = old.filter(pc.not_equal(old["trial_id"], trial_id))
            self._write_table(EVALS_FILE, pa.concat_tables([kept, new]))

    def read_evals(self) -> pa.Table:
        """All evaluation rows (empty with :data:`EVAL_SCHEMA` before the first write)."""
        return self._read_table(EVALS_FILE, EVAL_SCHEMA, exact=True)

    # --- throughput -----------------------------------------------------------------------

    def replace_throughput(
        self, trial_id: str, config: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]
    ) -> None:
        """Replace the throughput rows of ``trial_id`` (one per batch size).

        Each row has the :data:`THROUGHPUT_FIXED` fields except ``trial_id``; ``config`` is the
        trial's (nested) config, flattened into every row. When no row sets ``is_best``, the
        ``ok`` row with the highest samples/s is marked.
        """
        new = throughput_rows(trial_id, config, rows)
        with self._mutex:
            old = self.read_throughput()
            kept = [r for r in old.to_pylist() if r["trial_id"] != trial_id]
            self._write_table(THROUGHPUT_FILE, build_table(THROUGHPUT_FIXED, kept + new, old.schema))

    def read_throughput(self) -> pa.Table:
        """All throughput rows (empty with the fixed schema before the first write)."""
        return self._read_table(THROUGHPUT_FILE, THROUGHPUT_FIXED, exact=False)

    def has_throughput(self) -> bool:
        """Whether the job has written ``throughput.parquet`` (a ``kind: throughput`` job)."""
        return self._storage.exists(THROUGHPUT_FILE)

    # --- checkpoints and other files -------------------------------------------------------

    def checkpoint_relpath(self, trial_id: str) -> str:
        """``checkpoints/<trial_id>/best.pt``: the trials table's ``checkpoint`` value."""
        if not trial_id or "/" in trial_id or "\\" in trial_id or trial_id in (".", ".."):
            raise ValueError(f"trial_id {trial_id!r} cannot name a folder (expected no '/' or '..')")
        return f"checkpoints/{trial_id}/best.pt"

    def checkpoint_path(self, trial_id: str) -> Path:
        """The local path of a trial's best checkpoint (local job folders only)."""
        if not self.is_local:
            raise ResultsError(
                f"{self.job_dir} is not a local folder; write checkpoints with write_checkpoint_bytes()"
            )
        return Path(self._storage.location(self.checkpoint_relpath(trial_id)))

    def write_checkpoint_bytes(self, trial_id: str, data: bytes) -> str:
        """Atomically store a serialized checkpoint; returns its path relative to the job folder."""
        rel = self.checkpoint_relpath(trial_id)
        self._storage.write_atomic(rel, lambda f: f.write(data))
        return rel

    def read_checkpoint_bytes(self, trial_id: str) -> Optional[bytes]:
        """A trial's stored best checkpoint, or None when it has none (resume starts over)."""
        return self._storage.read_bytes(self.checkpoint_relpath(trial_id))

    def write_text(self, relpath: str, text: str) -> str:
        """Atomically write a UTF-8 text file in the job folder; returns its location."""
        return self._storage.write_text(relpath, text)

    def read_text(self, relpath: str) -> Optional[str]:
        """A text file's content, or None when it does not exist."""
        return self._storage.read_text(relpath)

    # --- internals ------------------------------------------------------------------------

    def _write_table(self, relpath: str, table: pa.Table) -> None:
        self._storage.write_atomic(relpath, lambda f: pq.write_table(table, f))

    def _read_table(self, relpath: str, fixed: pa.Schema, exact: bool) -> pa.Table:
        table = self._storage.read_table(relpath)
        if table is None:
            return fixed.empty_table()
        missing = [f.name for f in fixed if f.name not in table.column_names]
        if missing or (exact and table.column_names != fixed.names):
            raise ResultsError(
                f"{self.location(relpath)} does not have the expected columns (missing "
                f"{missing or 'none'}); it was written by another version. Move the job folder "
                "aside (fresh start) or use a different output/name"
            )
        return table.cast(fixed) if exact else table



def fresh_start(job_dir: str | os.PathLike[str]) -> Optional[str]:
    """Move an existing job folder aside to ``<name>.old-<UTC timestamp>``; never deletes.

    Refuses (:class:`ResultsLockedError`) while another run holds the folder. Returns the
    new location, or None when there was nothing to move.
    """
    storage = open_storage(job_dir, None)
    if not storage.exists(""):
        return None
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = f"{storage.root.rstrip('/')}.old-{stamp}"
    target, n = base, 1
    while storage.exists_abs(target):  # two fresh starts in one second
        n += 1
        target = f"{base}-{n}"
    with JobLock(job_dir):
        storage.move_root(target)
    log.info("moved the previous results %s aside to %s", storage.root, target)
    return target


def trial_row(
    trial: Any,
    *,
    status: str | TrialStatus,
    result: Any = None,
    error: Optional[str] = None,
    attempts: int = 1,
    started_at: Optional[dt.datetime] = None,
    finished_at: Optional[dt.datetime] = None,
    info: Optional[Mapping[str, Any]] = None,
    checkpoint: Optional[str] = None,
) -> dict[str, Any]:
    """A trials-table row for :meth:`ResultsStore.upsert_trial`.

    ``trial`` has ``trial_id`` and ``config`` (an ``orchestrator.spec.Trial``). ``result`` is
    the ``rnn.events.TrainResult`` when the run ended in the engine, else None (a crash, an
    OOM kill); ``info`` is the ``start`` event's info (params, device, precision, vocab_size,
    corpus_sha256), which fills what a missing result cannot. ``checkpoint`` is the best
    checkpoint's path relative to the job folder (see :meth:`ResultsStore.checkpoint_relpath`).
    """
    row: dict[str, Any] = {k: v for k, v in (info or {}).items() if k in TRIAL_FIXED.names}
    if result is not None:
        for f in dataclasses.fields(result):
            value = getattr(result, f.name)
            if f.name in TRIAL_FIXED.names and value is not None:
                row[f.name] = value
    row.update(
        trial_id=trial.trial_id,
        status=enum_value(status),
        error=error if error is not None else row.get("error"),
        attempts=attempts,
        started_at=started_at,
        finished_at=finished_at,
        checkpoint=checkpoint,
        config=trial.config,
    )
    return row
