"""Results of a job: the tables of one job folder, and how a finished trial is committed to them.

A job folder ``<output>/<name>/`` holds::

    trials.parquet       one row per trial (compacted)
    evals.parquet        one row per evaluation (``rnn.events.EvalRecord``; compacted)
    throughput.parquet   one row per (trial, batch size), for ``kind: throughput`` (compacted)
    parts/               one immutable file per trial finished since the last compaction
                         (see :mod:`orchestrator.results.parts`)
    manifest.json        the spec, and one record per invocation (see :mod:`orchestrator.results.manifest`)
    checkpoints/<trial_id>/best.pt
    report.md, report.html
    .lock                held by the run that is writing (see :class:`JobLock`)

**Commit.** :meth:`ResultsStore.commit_trial` validates a trial's row, evaluations and
throughput rows, then writes them as one part: a temporary file renamed into place. The rename
is the commit point: before it the trial is not finished (a rerun trains it again), after it
all of its results are. A commit costs the same whatever number of trials came before it.

**Compaction.** :meth:`ResultsStore.compact` folds the parts into the three tables, then
deletes them (see :mod:`orchestrator.results.compaction`). Readers see the union of tables and
parts, where a trial's part wins over its table rows.

**Sharing.** A store works on a :class:`~orchestrator.results.folder.JobFolder`: its storage, the
mutex its writes take and the newest-part map its commits keep. ``ResultsStore(path)`` makes a
folder of its own; stores that should share one are made from it (``ResultsStore(store.folder)``).
There is no process-wide registry.

Every file is written atomically (a temporary file in the same folder, then a rename).
``job_dir`` may be a local path or a pyarrow filesystem URI (``file:///...``; other
filesystems work where pyarrow supports them, but only local folders can be locked).

This module holds :class:`ResultsStore`, :func:`is_job_folder` and :func:`fresh_start`; the
package's public names are in :mod:`orchestrator.results`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import pyarrow.ipc as ipc

from orchestrator.results.compaction import compact
from orchestrator.results.folder import EVALS_FILE, THROUGHPUT_FILE, TRIALS_FILE, JobFolder
from orchestrator.results.lock import JobLock
from orchestrator.results.parts import (
    PARTS_DIR,
    Part,
    PartRef,
    check_trial_id,
    encode_part,
    list_parts,
    merge_evals,
    merge_throughput,
    merge_trials,
)
from orchestrator.results.records import EVAL_SCHEMA, THROUGHPUT_FIXED, TRIAL_FIXED, eval_records
from orchestrator.results.storage import ResultsError, open_storage
from orchestrator.results.tables import (
    TERMINAL_STATUSES,
    build_table,
    enum_value,
    eval_rows,
    normalize_trial_row,
    throughput_rows,
)
from rnn.events import EvalRecord, TrialStatus

__all__ = ["RecordError", "ResultsStore", "fresh_start", "is_job_folder"]

log = logging.getLogger(__name__)

#: Reads of the union retried when a part vanished under them (a concurrent compaction).
_READ_ATTEMPTS = 5


class RecordError(ResultsError, ValueError):
    """A trial's row, evaluations or throughput rows do not fit the tables; nothing was written."""


#: A trial's best checkpoint (the trials table's ``checkpoint``) and, under successive halving,
#: a paused trial's resume point.
BEST_CHECKPOINT = "best.pt"
RESUME_CHECKPOINT = "last.pt"


class ResultsStore:
    """Read and write one job's results. Writes are atomic; concurrent runs need :class:`JobLock`.

    ``job_dir`` is a :class:`JobFolder` to share with the other stores made from it, or a path,
    for a folder of this store's own: a local path or a URI, or a path on ``filesystem`` (a
    ``pyarrow.fs.FileSystem``, only with a path). Nothing is created until the first write.
    """

    def __init__(self, job_dir: str | os.PathLike[str] | JobFolder, filesystem: Any = None) -> None:
        if isinstance(job_dir, JobFolder):
            if filesystem is not None:
                raise ValueError("filesystem applies to a job folder path, not to a JobFolder (it has its own)")
            self._folder = job_dir
        else:
            self._folder = JobFolder(job_dir, filesystem)
        self._storage = self._folder.storage

    @property
    def folder(self) -> JobFolder:
        """The :class:`JobFolder` this store works on: ``ResultsStore(store.folder)`` shares it."""
        return self._folder

    @property
    def job_dir(self) -> str:
        """The job folder (a local path, or a path on the store's filesystem)."""
        return self._folder.root

    @property
    def is_local(self) -> bool:
        """True for a local job folder (checkpoints can be written by path, the folder locked)."""
        return self._storage.is_local

    def location(self, relpath: str) -> str:
        """Where ``relpath`` (relative to the job folder) lives."""
        return self._folder.location(relpath)

    # --- committing a finished trial -------------------------------------------------------

    def commit_trial(
        self,
        row: Mapping[str, Any],
        evals: Iterable[Any] = (),
        throughput: Iterable[Any] = (),
    ) -> str:
        """Record a finished trial: its trials row, its evaluations and its throughput rows, at once.

        ``row`` is what :func:`trial_row` builds: fixed columns (:data:`TRIAL_FIXED`) plus the
        config as a nested ``"config"`` mapping or dotted keys (``"model.cell"``). ``evals`` are
        ``rnn.events.EvalRecord``s (or mappings with exactly its fields), the trial's full
        history; ``throughput`` are ``rnn.throughput.ThroughputRow``s or mappings of some of its
        fields, with ``is_best`` already marked (``rnn.throughput.mark_best``). Each throughput
        row gets the trial's config columns.

        Everything is validated before anything is written (:class:`RecordError`, a ValueError,
        names the problem), and the trial's part is renamed into place as the last step: when
        this raises, nothing of the trial is committed, it is not finished, and a rerun trains it
        again. Committing a trial again replaces all of its results. Returns the part's location.
        """
        flat = self._validated_row(row)
        tid = flat["trial_id"]
        try:
            table = encode_part(flat, eval_rows(tid, evals), throughput_rows(tid, throughput))
        except ValueError as e:
            raise RecordError(f"{e}; nothing of trial {tid} was written (it is not finished)") from e
        with self._folder.mutex:
            newest = self._folder.newest_parts()
            seq = max(time.time_ns(), self._folder.last_seq + 1)
            ref = PartRef(seq, tid, flat["status"])
            self._storage.write_atomic(ref.relpath, lambda f: _write_ipc(table, f))  # the commit point
            self._folder.last_seq = seq
            old = newest.get(tid)
            newest[tid] = ref
        if old is not None:
            self._drop_superseded(old)
        return self.location(ref.relpath)

    def _validated_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        try:
            flat = normalize_trial_row(row)
            check_trial_id(flat["trial_id"])
        except ValueError as e:
            tid = row.get("trial_id") if isinstance(row, Mapping) else None
            raise RecordError(f"{e}; nothing of trial {tid} was written (it is not finished)") from e
        return flat

    def _drop_superseded(self, ref: PartRef) -> None:
        # Readers already ignore it (an older seq); deleting it only keeps parts/ small.
        try:
            self._folder.delete_part(ref)
        except ResultsError as e:
            log.warning("could not delete the superseded part %s (%s); the next compaction will", ref.name, e)

    # --- compaction (orchestrator.results.compaction) -------------------------------------------

    def compact(self) -> int:
        """Fold the parts into ``trials.parquet``, ``evals.parquet`` and ``throughput.parquet``
        (:func:`orchestrator.results.compaction.compact`); returns the number of trials folded in.

        Call it while holding the job's :class:`JobLock` (the runner does at the end of a run;
        ``report`` and ``clean`` do when no run holds it, see :func:`compact_if_idle`). A crash at
        any point loses nothing, and compacting again is a no-op on the tables' content.
        """
        return compact(self._folder)

    def pending_parts(self) -> int:
        """How many trials are committed as parts and not yet compacted."""
        return len(self._folder.listing().latest)

    def commit_marker(self) -> int:
        """The newest commit's sequence number among the parts (0 for none): it changes with every
        trial committed, so a live reader can tell from one listing whether anything finished."""
        return self._folder.listing().max_seq

    # --- reading: the union of tables and parts --------------------------------------------

    def read_trials(self) -> pa.Table:
        """All trial rows (an empty table with the fixed schema before the first commit)."""
        return self._union(TRIALS_FILE, TRIAL_FIXED, False, merge_trials)

    def finished_trial_ids(self, statuses: Iterable[str | TrialStatus] = TERMINAL_STATUSES) -> set[str]:
        """Ids of trials whose status is in ``statuses`` (the dispatcher skips these on resume).

        Cheap at any size: two columns of ``trials.parquet`` and a listing of ``parts/``, whose
        file names carry each part's status; no part is opened.
        """
        wanted = {str(enum_value(s)) for s in statuses}
        status: dict[str, str] = {}
        # Parts listed before the table is read: a compaction in between moves a trial from a
        # part into the table, never out of both.
        latest = self._folder.listing().latest
        table = self._storage.read_table(TRIALS_FILE, columns=["trial_id", "status"])
        if table is not None:
            status.update(zip(table["trial_id"].to_pylist(), table["status"].to_pylist(), strict=True))
        status.update((r.trial_id, r.status) for r in latest)
        return {tid for tid, s in status.items() if s in wanted}

    def read_evals(self) -> pa.Table:
        """All evaluation rows (empty with :data:`EVAL_SCHEMA` before the first commit)."""
        return self._union(EVALS_FILE, EVAL_SCHEMA, True, merge_evals)

    def read_histories(
        self, trial_ids: Iterable[str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, list[EvalRecord]]]:
        """For the trials of ``trial_ids`` that have a row: their rows by id, and each one's
        evaluations in table order (the evaluations are read only when some row exists)."""
        ids = set(trial_ids)
        rows = {r["trial_id"]: r for r in self.read_trials().to_pylist() if r["trial_id"] in ids}
        evals: dict[str, list[EvalRecord]] = {}
        if rows:
            table = self.read_evals()
            for tid, record in zip(table["trial_id"].to_pylist(), eval_records(table), strict=True):
                if tid in rows:
                    evals.setdefault(tid, []).append(record)
        return rows, evals

    def read_throughput(self) -> pa.Table:
        """All throughput rows (empty with the fixed schema before the first commit)."""
        return self._union(THROUGHPUT_FILE, THROUGHPUT_FIXED, False, merge_throughput)

    def has_throughput(self) -> bool:
        """Whether the job has throughput rows or ``throughput.parquet`` (a ``kind: throughput`` job)."""
        if self._storage.exists(THROUGHPUT_FILE):
            return True
        return any(p.throughput for p in self._folder.load(self._folder.listing().latest))

    def clear_checkpoints(self, trial_ids: Iterable[str]) -> int:
        """Compact, then set the ``checkpoint`` column of ``trial_ids`` to None (after ``clean``
        removed their files). Call it while holding the job's :class:`JobLock`. Returns the
        number of rows changed."""
        ids = set(trial_ids)
        with self._folder.mutex:
            self.compact()
            table = self._folder.read_table(TRIALS_FILE, TRIAL_FIXED, exact=False)
            rows = table.to_pylist()
            changed = 0
            for r in rows:
                if r["trial_id"] in ids and r["checkpoint"] is not None:
                    r["checkpoint"], changed = None, changed + 1
            if changed:
                self._folder.write_table(TRIALS_FILE, build_table(TRIAL_FIXED, rows, table.schema))
        return changed

    # --- checkpoints and other files -------------------------------------------------------

    def checkpoint_relpath(self, trial_id: str, name: str = BEST_CHECKPOINT) -> str:
        """``checkpoints/<trial_id>/best.pt``: the trials table's ``checkpoint`` value.

        ``name=RESUME_CHECKPOINT`` (``last.pt``) is a paused trial's resume point under
        successive halving: the state at its rung, which the best checkpoint need not be.
        """
        if not trial_id or "/" in trial_id or "\\" in trial_id or trial_id in (".", ".."):
            raise ValueError(f"trial_id {trial_id!r} cannot name a folder (expected no '/' or '..')")
        if name not in (BEST_CHECKPOINT, RESUME_CHECKPOINT):
            raise ValueError(f"checkpoint name {name!r} is not {BEST_CHECKPOINT!r} or {RESUME_CHECKPOINT!r}")
        return f"checkpoints/{trial_id}/{name}"

    def checkpoint_path(self, trial_id: str) -> Path:
        """The local path of a trial's best checkpoint (local job folders only)."""
        if not self.is_local:
            raise ResultsError(
                f"{self.job_dir} is not a local folder; write checkpoints with write_checkpoint_bytes()"
            )
        return Path(self._storage.location(self.checkpoint_relpath(trial_id)))

    def write_checkpoint_bytes(self, trial_id: str, data: bytes, name: str = BEST_CHECKPOINT) -> str:
        """Atomically store a serialized checkpoint; returns its path relative to the job folder."""
        rel = self.checkpoint_relpath(trial_id, name)
        self._storage.write_atomic(rel, lambda f: f.write(data))
        return rel

    def read_checkpoint_bytes(self, trial_id: str, name: str = BEST_CHECKPOINT) -> Optional[bytes]:
        """A trial's stored checkpoint, or None when it has none (resume starts over)."""
        return self._storage.read_bytes(self.checkpoint_relpath(trial_id, name))

    def open_checkpoint(
        self, trial_id: str, name: str = BEST_CHECKPOINT
    ) -> contextlib.AbstractContextManager[Optional[pa.NativeFile]]:
        """A trial's stored checkpoint as a stream to read in chunks, or None when it has none: how
        a checkpoint is handed on (to the report's sampler) without holding it in this process."""
        return self._storage.open_input(self.checkpoint_relpath(trial_id, name))

    def delete_checkpoint(self, trial_id: str, name: str) -> bool:
        """Delete one of a trial's checkpoints; False when it was not there."""
        return self._storage.delete(self.checkpoint_relpath(trial_id, name))

    def write_text(self, relpath: str, text: str) -> str:
        """Atomically write a UTF-8 text file in the job folder; returns its location."""
        return self._storage.write_text(relpath, text)

    def read_text(self, relpath: str) -> Optional[str]:
        """A text file's content, or None when it does not exist."""
        return self._storage.read_text(relpath)

    def list_names(self, relpath: str) -> list[str]:
        """The plain files directly in folder ``relpath`` of the job folder (none if it does not exist)."""
        return self._storage.list_names(relpath)

    # --- internals ------------------------------------------------------------------------

    def _union(
        self, relpath: str, fixed: pa.Schema, exact: bool, merge: Callable[[pa.Table, list[Part]], pa.Table]
    ) -> pa.Table:
        """A table merged with the parts (which win). The parts are listed before the table is
        read, and a listed part gone when it is opened means a compaction or a newer commit ran
        in between: then all is read again, so a reader never misses a committed trial."""
        for _ in range(_READ_ATTEMPTS):
            refs = self._folder.listing().latest
            table = self._folder.read_table(relpath, fixed, exact)
            parts = self._folder.load(refs)
            if len(parts) == len(refs):
                break
        return merge(table, parts) if parts else table


def _write_ipc(table: pa.Table, sink: Any) -> None:
    with ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def is_job_folder(path: str | os.PathLike[str]) -> bool:
    """Whether the local folder ``path`` holds trial results: ``trials.parquet`` or trial parts."""
    storage = open_storage(path, None)
    return storage.exists(TRIALS_FILE) or bool(list_parts(storage.list_names(PARTS_DIR)).latest)


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
