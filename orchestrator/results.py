"""Results of a job: Parquet tables with explicit Arrow schemas, the manifest and the lock.

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
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import fcntl
import glob
import importlib.metadata
import json
import logging
import math
import os
import platform
import posixpath
import re
import secrets
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from rnn.events import EvalRecord, TrialStatus

__all__ = [
    "EVAL_SCHEMA",
    "FAILURE_STATUSES",
    "SUCCESS_STATUSES",
    "TERMINAL_STATUSES",
    "THROUGHPUT_FIXED",
    "THROUGHPUT_STATUSES",
    "TRIAL_FIXED",
    "JobLock",
    "ResultsError",
    "ResultsLockedError",
    "ResultsStore",
    "flatten_config",
    "fresh_start",
    "package_versions",
    "read_manifest",
    "trial_row",
    "write_manifest",
]

log = logging.getLogger(__name__)

TRIALS_FILE = "trials.parquet"
EVALS_FILE = "evals.parquet"
THROUGHPUT_FILE = "throughput.parquet"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = ".lock"

#: Statuses after which a trial is not run again: all of them, for a finished run.
TERMINAL_STATUSES: frozenset[str] = frozenset(s.value for s in TrialStatus)
#: Statuses of a trial that produced a usable model.
SUCCESS_STATUSES: frozenset[str] = frozenset(s.value for s in TrialStatus if s.is_success())
#: Statuses listed under "Failures" in the report; a dispatcher that retries failures on
#: resume passes ``TERMINAL_STATUSES - FAILURE_STATUSES`` to :meth:`ResultsStore.finished_trial_ids`.
FAILURE_STATUSES: frozenset[str] = TERMINAL_STATUSES - SUCCESS_STATUSES

_VERSIONED_PACKAGES = ("torch", "ray", "pyarrow", "tokenizers", "numpy", "rnn-orchestrator")


THROUGHPUT_STATUSES: tuple[str, ...] = ("ok", "oom", "error")


class ResultsError(Exception):
    """A results folder cannot be read or written; the message names the path and the cause."""


# --- schemas -------------------------------------------------------------------------------

_TS = pa.timestamp("us", tz="UTC")

#: The fixed columns of ``trials.parquet``; flattened config columns (``model.cell``) follow.
TRIAL_FIXED: pa.Schema = pa.schema(
    [
        ("trial_id", pa.string()),
        ("status", pa.string()),  # a TrialStatus value
        ("best_val_loss", pa.float64()),
        ("best_val_bpc", pa.float64()),
        ("best_val_accuracy", pa.float64()),
        ("best_step", pa.int64()),
        ("params", pa.int64()),
        ("steps", pa.int64()),
        ("device", pa.string()),
        ("precision", pa.string()),
        ("train_time_s", pa.float64()),
        ("started_at", _TS),
        ("finished_at", _TS),
        ("error", pa.string()),
        ("checkpoint", pa.string()),  # relative to the job folder
        ("attempts", pa.int32()),
        ("corpus_sha256", pa.string()),
        ("vocab_size", pa.int64()),
    ]
)


def _eval_schema() -> pa.Schema:
    types = {"int": pa.int64(), "float": pa.float64()}
    fields = [pa.field("trial_id", pa.string())]
    for f in dataclasses.fields(EvalRecord):
        if str(f.type) not in types:  # fail at import, not in the middle of a sweep
            raise TypeError(f"EvalRecord.{f.name} has type {f.type}; results.py maps only int/float")
        fields.append(pa.field(f.name, types[str(f.type)]))
    return pa.schema(fields)


#: ``evals.parquet``: ``trial_id`` then exactly the fields of ``rnn.events.EvalRecord``.
EVAL_SCHEMA: pa.Schema = _eval_schema()

#: The fixed columns of ``throughput.parquet``; flattened config columns follow.
THROUGHPUT_FIXED: pa.Schema = pa.schema(
    [
        ("trial_id", pa.string()),
        ("batch_size", pa.int64()),
        ("status", pa.string()),  # ok | oom | error
        ("samples_per_s", pa.float64()),
        ("tokens_per_s", pa.float64()),
        ("step_time_ms", pa.float64()),  # median
        ("step_time_ms_max", pa.float64()),
        ("peak_mem_mb", pa.float64()),
        ("device", pa.string()),
        ("device_name", pa.string()),
        ("precision", pa.string()),
        ("torch_version", pa.string()),
        ("error", pa.string()),
        ("is_best", pa.bool_()),
    ]
)


# --- rows: flattening, type inference, validation ---------------------------------------------


def flatten_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten a nested config into dotted scalar columns: ``{"model": {"cell": "gru"}}`` ->
    ``{"model.cell": "gru"}``.

    Leaves become bool/int/float/str/None; lists and tuples become JSON strings, enums their
    values, an empty mapping ``"{}"``, anything else ``str(value)``. Dataclasses are accepted.
    """

    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            node = dataclasses.asdict(node)
        for key, value in node.items():
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = dataclasses.asdict(value)
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, name + ".")
            else:
                out[name] = "{}" if isinstance(value, Mapping) else _scalar(value)

    walk(config, "")
    return out


def _scalar(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value), default=str)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _kind(value: Any) -> str:
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, types):  # bool before int: True is an int to Python
            return kind
    return "other"


def _column_type(values: list[Any], previous: Optional[pa.DataType] = None) -> pa.DataType:
    """A config column's type from all its values and the type it had before.

    Promotions only go up (null < bool, int64 < float64 < string; any other mix is string),
    so a column's type is stable as trials arrive, are replaced, or hold None.
    """
    kinds = {_kind(v) for v in values if v is not None}
    if not kinds:
        typ = pa.null()
    elif kinds == {"bool"}:
        typ = pa.bool_()
    elif kinds == {"int"}:
        typ = pa.int64()
    elif kinds <= {"int", "float"}:
        typ = pa.float64()
    else:
        typ = pa.string()
    if previous is None or previous == typ or pa.types.is_null(previous):
        return typ
    if pa.types.is_null(typ):
        return previous
    if {str(previous), str(typ)} == {"int64", "double"}:
        return pa.float64()
    return pa.string()


def _coerce(value: Any, typ: pa.DataType) -> Any:
    if value is None:
        return None
    if pa.types.is_float64(typ):
        return float(value)
    if pa.types.is_string(typ) and not isinstance(value, str):
        return json.dumps(value)
    return value


def _build_table(
    fixed: pa.Schema, rows: list[dict[str, Any]], previous: Optional[pa.Schema] = None
) -> pa.Table:
    """Fixed columns with their declared types, then config columns in first-seen order,
    each typed from its values and its type in ``previous`` (the schema on disk)."""
    extra: dict[str, None] = {}
    for row in rows:
        extra.update((k, None) for k in row if k not in fixed.names and k not in extra)
    fields, arrays = list(fixed), []
    for f in fixed:
        arrays.append(_array(f.name, [r.get(f.name) for r in rows], f.type))
    for name in extra:
        values = [r.get(name) for r in rows]
        prev = previous.field(name).type if previous is not None and name in previous.names else None
        typ = _column_type(values, prev)
        fields.append(pa.field(name, typ))
        arrays.append(_array(name, [_coerce(v, typ) for v in values], typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _array(name: str, values: list[Any], typ: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        raise ValueError(f"column {name!r}: cannot store {values!r} as {typ} ({e})") from e


def _enum_value(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


def _timestamp(value: Any, name: str) -> Optional[dt.datetime]:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime or epoch seconds (got {value!r}); "
            "use datetime.now(timezone.utc)"
        )
    return value.astimezone(dt.timezone.utc)


def _merge_config(out: dict[str, Any], config: Mapping[str, Any], fixed: pa.Schema) -> None:
    flat = flatten_config(config)
    clash = sorted(set(flat) & set(fixed.names))
    if clash:
        raise ValueError(f"config keys {clash} clash with fixed result columns; rename them")
    out.update(flat)


def _normalize_trial_row(row: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    unknown = []
    for key, value in row.items():
        if key == "config":
            _merge_config(out, value, TRIAL_FIXED)
        elif key in TRIAL_FIXED.names:
            out[key] = _enum_value(value)
        elif "." in key:
            out[key] = _scalar(value)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"unknown trials column(s) {unknown}; expected {TRIAL_FIXED.names}, a nested "
            "'config' mapping, or dotted config keys such as 'model.cell'"
        )
    tid = out.get("trial_id")
    if not isinstance(tid, str) or not tid:
        raise ValueError(f"a trial row needs a non-empty string trial_id (got {tid!r})")
    if out.get("status") not in TERMINAL_STATUSES:
        raise ValueError(
            f"trial {tid}: status {out.get('status')!r} is not one of {sorted(TERMINAL_STATUSES)}"
        )
    for name in ("started_at", "finished_at"):
        out[name] = _timestamp(out.get(name), name)
    return out


def _eval_rows(trial_id: str, rows: Iterable[Any]) -> list[dict[str, Any]]:
    names = EVAL_SCHEMA.names[1:]
    out = []
    for row in rows:
        d = dataclasses.asdict(row) if dataclasses.is_dataclass(row) else dict(row)
        if set(d) != set(names):
            raise ValueError(
                f"trial {trial_id}: an evaluation row has fields {sorted(d)}; expected exactly "
                f"the EvalRecord fields {names}"
            )
        out.append({"trial_id": trial_id, **d})
    return out


def _throughput_rows(
    trial_id: str, config: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    flat: dict[str, Any] = {}
    _merge_config(flat, config, THROUGHPUT_FIXED)
    out = []
    for row in rows:
        d = {k: _enum_value(v) for k, v in row.items()}
        unknown = sorted(set(d) - set(THROUGHPUT_FIXED.names))
        if unknown:
            raise ValueError(
                f"trial {trial_id}: unknown throughput field(s) {unknown}; expected {THROUGHPUT_FIXED.names[1:]}"
            )
        if d.setdefault("trial_id", trial_id) != trial_id:
            raise ValueError(f"a throughput row of trial {trial_id} names trial {d['trial_id']!r}")
        if d.get("status") not in THROUGHPUT_STATUSES:
            raise ValueError(
                f"trial {trial_id}: throughput status {d.get('status')!r} is not one of {THROUGHPUT_STATUSES}"
            )
        out.append({**d, **flat})
    if all(r.get("is_best") is None for r in out):
        ok = [r for r in out if r["status"] == "ok" and _finite(r.get("samples_per_s"))]
        best = max(ok, key=lambda r: r["samples_per_s"]) if ok else None
        for r in out:
            r["is_best"] = r is best
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# --- storage: a local folder or a pyarrow filesystem -----------------------------------------

_LOCAL_FS = pafs.LocalFileSystem()
_MUTEXES: dict[str, threading.Lock] = {}
_MUTEXES_GUARD = threading.Lock()
_TEMP_RE = re.compile(r"\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


class _Storage:
    """A job folder on the local disk (``fs`` is None: os calls, fsync, flock) or on a
    pyarrow filesystem (``fs.move`` replaces the file; atomic where the filesystem's rename is)."""

    def __init__(self, fs: Optional[pafs.FileSystem], root: str) -> None:
        self.fs, self.root = fs, root

    @property
    def is_local(self) -> bool:
        return self.fs is None

    def location(self, rel: str) -> str:
        if not rel:
            return self.root
        return os.path.join(self.root, rel) if self.is_local else posixpath.join(self.root, rel)

    def exists_abs(self, path: str) -> bool:
        if self.is_local:
            return os.path.exists(path)
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def exists(self, rel: str) -> bool:
        return self.exists_abs(self.location(rel))

    def read_bytes(self, rel: str) -> Optional[bytes]:
        path = self.location(rel)
        try:
            with (self.fs or _LOCAL_FS).open_input_stream(path) as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise ResultsError(f"cannot read {path}: {e}") from e

    def read_table(self, rel: str) -> Optional[pa.Table]:
        path = self.location(rel)
        try:
            # Open once and read through that handle: given a path, pyarrow stats the file and
            # then opens it again, and a rename in between pairs the old size with the new file.
            with (self.fs or _LOCAL_FS).open_input_file(path) as f:
                return pq.read_table(f)
        except (FileNotFoundError, NotADirectoryError):  # nothing written yet
            return None
        except (OSError, pa.ArrowException) as e:
            raise ResultsError(
                f"cannot read {path}: {e}; if it is damaged, move the job folder aside (fresh start)"
            ) from e

    def write_atomic(self, rel: str, write: Callable[[Any], Any]) -> None:
        """Write ``rel`` through ``write(file)`` into a temporary sibling, then rename it over."""
        final = self.location(rel)
        folder = os.path.dirname(final) if self.is_local else posixpath.dirname(final)
        tmp_name = f".{os.path.basename(final)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp = os.path.join(folder, tmp_name) if self.is_local else posixpath.join(folder, tmp_name)
        try:
            if self.is_local:
                os.makedirs(folder, exist_ok=True)
            else:
                self.fs.create_dir(folder, recursive=True)
        except OSError as e:
            raise ResultsError(
                f"cannot create the results folder {folder}: {e.strerror or e}; check that the "
                "output folder is writable or choose another output"
            ) from e
        try:
            try:
                if self.is_local:
                    # O_EXCL: never follow or reuse someone else's file; 0o666 & umask, not mkstemp's 0o600.
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                    with os.fdopen(fd, "wb") as f:
                        write(f)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, final)
                    _fsync_dir(folder)
                else:
                    with self.fs.open_output_stream(tmp) as f:
                        write(f)
                    self.fs.move(tmp, final)
            except BaseException:
                self._discard(tmp)
                raise
        except OSError as e:
            raise ResultsError(f"cannot write {final}: {e.strerror or e}; check the output folder") from e

    def _discard(self, path: str) -> None:
        with contextlib.suppress(OSError):
            if self.is_local:
                os.unlink(path)
            else:
                self.fs.delete_file(path)

    def move_root(self, target: str) -> None:
        try:
            if self.is_local:
                os.rename(self.root, target)
            else:
                self.fs.move(self.root, target)
        except OSError as e:
            raise ResultsError(f"cannot move {self.root} aside to {target}: {e.strerror or e}") from e


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (a crash right after it could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_storage(job_dir: str | os.PathLike[str], filesystem: Optional[pafs.FileSystem]) -> _Storage:
    text = os.fspath(job_dir)
    if filesystem is not None:
        fs, path = filesystem, text
    elif "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise ResultsError(f"cannot open the output {text}: {e}") from e
    else:
        return _Storage(None, os.path.abspath(text))
    if isinstance(fs, pafs.LocalFileSystem):
        return _Storage(None, os.path.abspath(path))
    return _Storage(fs, path.rstrip("/"))


def _cleanup_stale_temps(root: str) -> None:
    """Remove temporary files left by killed writers (their pid is gone)."""
    for folder in [root, *glob.glob(os.path.join(root, "checkpoints", "*"))]:
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            m = _TEMP_RE.fullmatch(name)
            if m and not _pid_alive(int(m["pid"])):
                log.info("removing a temporary file left by a killed run: %s", name)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class ResultsLockedError(ResultsError):
    """Another process holds the job folder's lock."""

    def __init__(self, job_dir: str, pid: Optional[int], started_at: Optional[str]) -> None:
        self.job_dir, self.pid, self.started_at = job_dir, pid, started_at
        super().__init__(
            f"another run (pid {pid if pid is not None else 'unknown'}, started "
            f"{started_at or 'unknown'}) is writing to {job_dir}; wait for it or use a "
            "different output/name"
        )


class ResultsStore:
    """Read and write one job's tables. Writes are atomic; concurrent runs need :class:`JobLock`.

    ``filesystem`` (optional) is a ``pyarrow.fs.FileSystem`` on which ``job_dir`` is a path;
    without it ``job_dir`` is a local path or a URI. Nothing is created until the first write.
    """

    def __init__(self, job_dir: str | os.PathLike[str], filesystem: Any = None) -> None:
        self._storage: _Storage = _open_storage(job_dir, filesystem)
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
        new = _normalize_trial_row(row)
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
            self._write_table(TRIALS_FILE, _build_table(TRIAL_FIXED, rows, old.schema))

    def read_trials(self) -> pa.Table:
        """All trial rows (an empty table with the fixed schema before the first write)."""
        return self._read_table(TRIALS_FILE, TRIAL_FIXED, exact=False)

    def finished_trial_ids(self, statuses: Iterable[str] = TERMINAL_STATUSES) -> set[str]:
        """Ids of trials whose status is in ``statuses`` (the dispatcher skips these on resume)."""
        wanted = {s.value if isinstance(s, TrialStatus) else str(s) for s in statuses}
        table = self.read_trials()
        return {
            tid
            for tid, status in zip(table["trial_id"].to_pylist(), table["status"].to_pylist())
            if status in wanted
        }

    # --- evaluations ----------------------------------------------------------------------

    def replace_evals(self, trial_id: str, rows: Iterable[Any]) -> None:
        """Replace every evaluation row of ``trial_id`` with ``rows``.

        ``rows`` are ``EvalRecord`` objects or mappings with exactly its fields. A retried
        trial writes its full history again, so nothing is duplicated.
        """
        new = pa.Table.from_pylist(_eval_rows(trial_id, rows), schema=EVAL_SCHEMA)
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
        new = _throughput_rows(trial_id, config, rows)
        with self._mutex:
            old = self.read_throughput()
            kept = [r for r in old.to_pylist() if r["trial_id"] != trial_id]
            self._write_table(THROUGHPUT_FILE, _build_table(THROUGHPUT_FIXED, kept + new, old.schema))

    def read_throughput(self) -> pa.Table:
        """All throughput rows (empty with the fixed schema before the first write)."""
        return self._read_table(THROUGHPUT_FILE, THROUGHPUT_FIXED, exact=False)

    def has_throughput(self) -> bool:
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
        self._storage.write_atomic(relpath, lambda f: f.write(text.encode("utf-8")))
        return self._storage.location(relpath)

    def read_text(self, relpath: str) -> Optional[str]:
        """A text file's content, or None when it does not exist."""
        data = self._storage.read_bytes(relpath)
        return None if data is None else data.decode("utf-8")

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


# --- manifest ------------------------------------------------------------------------------


def write_manifest(
    job_dir: str | os.PathLike[str],
    spec_text: str,
    spec_path: str | os.PathLike[str] | None,
    extra: Optional[Mapping[str, Any]] = None,
) -> str:
    """Write ``manifest.json``: what is needed to know how these results were produced.

    Records the spec as submitted (raw text) and its path, package versions (from package
    metadata: nothing heavy is imported), the host, the git commit of the working directory
    (None outside a repository) and ``created_at``. ``extra`` is merged in at the top level
    and is where the caller puts ``name``, ``kind``, ``corpus_sha256`` (corpus -> sha256) and
    ``devices`` (a list of device reports); its keys win over the defaults. Returns the
    manifest's location.
    """
    manifest: dict[str, Any] = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec_path": os.fspath(spec_path) if spec_path is not None else None,
        "spec_text": spec_text,
        "corpus_sha256": {},
        "devices": [],
        "versions": package_versions(),
        "host": {"hostname": socket.gethostname(), "platform": platform.platform()},
        **_git_info(),
    }
    manifest.update(extra or {})
    text = json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n"
    return ResultsStore(job_dir).write_text(MANIFEST_FILE, text)


def read_manifest(job_dir: str | os.PathLike[str]) -> Optional[dict[str, Any]]:
    """The manifest as a dict, or None when the job folder has none."""
    text = ResultsStore(job_dir).read_text(MANIFEST_FILE)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{job_dir}/{MANIFEST_FILE} is not valid JSON ({e})") from e


def package_versions() -> dict[str, Optional[str]]:
    """Versions of the packages that shape results, plus Python's (None: not installed)."""
    versions: dict[str, Optional[str]] = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git_info() -> dict[str, Any]:
    """The commit of the working directory's repository and whether it has local changes."""

    def git(*args: str) -> Optional[str]:
        try:
            out = subprocess.run(
                ["git", *args], capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit or None, "git_dirty": None if status is None else bool(status)}


# --- lock and fresh start ---------------------------------------------------------------


class JobLock:
    """Exclusive ``flock`` on ``<job>/.lock`` for as long as a run writes to the folder.

    A second holder (another process, or another open of the file in this one) gets
    :class:`ResultsLockedError` at once rather than waiting. The lock file keeps the holder's
    pid and start time for that message; it is never deleted (deleting a lock file lets two
    processes lock two different files). Non-local filesystems cannot be locked: a warning
    is logged and nothing is guarded.
    """

    def __init__(self, job_dir: str | os.PathLike[str]) -> None:
        self._storage = _open_storage(job_dir, None)
        self._fd: Optional[int] = None

    def acquire(self) -> "JobLock":
        if not self._storage.is_local:
            log.warning("%s is not a local folder: concurrent runs are not locked out", self._storage.root)
            return self
        root = self._storage.root
        path = os.path.join(root, LOCK_FILE)
        try:
            os.makedirs(root, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ResultsError(f"cannot create the lock file {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ResultsLockedError(root, holder.get("pid"), holder.get("started_at")) from None
        except OSError as e:
            os.close(fd)
            raise ResultsError(f"cannot lock {path}: {e.strerror or e}") from e
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "started_at": now, "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        _cleanup_stale_temps(root)  # safe: no other run writes here while we hold the lock
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "JobLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}  # the holder has not written its pid yet
    return info if isinstance(info, dict) else {}


def fresh_start(job_dir: str | os.PathLike[str]) -> Optional[str]:
    """Move an existing job folder aside to ``<name>.old-<UTC timestamp>``; never deletes.

    Refuses (:class:`ResultsLockedError`) while another run holds the folder. Returns the
    new location, or None when there was nothing to move.
    """
    storage = _open_storage(job_dir, None)
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

    ``trial`` has ``trial_id`` and ``config`` (an ``orchestrator.sweep.Trial``). ``result`` is
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
        status=_enum_value(status),
        error=error if error is not None else row.get("error"),
        attempts=attempts,
        started_at=started_at,
        finished_at=finished_at,
        checkpoint=checkpoint,
        config=trial.config,
    )
    return row
