"""The rows of a job's tables: statuses, row validation, config flattening and table building.

``trials.parquet`` and ``throughput.parquet`` have fixed columns (:data:`TRIAL_FIXED`,
:data:`THROUGHPUT_FIXED`, derived from the records in :mod:`orchestrator.results.records`)
followed by the trial config flattened into dotted columns (``model.cell``); ``evals.parquet``
has exactly :data:`EVAL_SCHEMA`. A config column's Arrow
type is inferred from its values and only ever promoted (null < bool, int64 < float64 < string),
so it stays stable as trials arrive. Nothing here touches the disk: see
:mod:`orchestrator.results.storage` for that and :class:`orchestrator.results.store.ResultsStore` for the tables.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import numpy as np
import pyarrow as pa

from orchestrator.results.records import (
    EVAL_SCHEMA,
    THROUGHPUT_FIXED,
    TRIAL_FIXED,
    TrialRecord,
    config_from_json,
    config_to_json,
)
from orchestrator.spec.expand import trial_config
from rnn.events import TrialStatus
from rnn.throughput_row import ThroughputStatus

__all__ = [
    "EVAL_SCHEMA",
    "FAILURE_STATUSES",
    "SUCCESS_STATUSES",
    "TERMINAL_STATUSES",
    "THROUGHPUT_FIXED",
    "THROUGHPUT_STATUSES",
    "TRIAL_FIXED",
    "build_table",
    "enum_value",
    "eval_rows",
    "flatten_config",
    "normalize_trial_row",
    "record_row",
    "throughput_rows",
    "trial_record",
    "trial_row",
    "trial_status",
]

# Derived from TrialStatus, never listed by hand: a status the orchestrator adds (``timeout``)
# is terminal, and a failure unless TrialStatus.is_success says otherwise. The sets hold the
# enum members; a status read back from a table is its string value, and since TrialStatus is a
# ``str`` Enum (equal to, and hashed as, its value) ``row["status"] in SUCCESS_STATUSES`` holds
# for both.
#: Statuses after which a trial is not run again: all but ``paused`` (successive halving
#: resumes or prunes a paused trial later).
TERMINAL_STATUSES: frozenset[TrialStatus] = frozenset(s for s in TrialStatus if s.is_terminal())
#: Statuses of a trial that produced a usable model.
SUCCESS_STATUSES: frozenset[TrialStatus] = frozenset(s for s in TrialStatus if s.is_success())
#: Statuses listed under "Failures" in the report; a dispatcher that retries failures on
#: resume passes ``TERMINAL_STATUSES - FAILURE_STATUSES`` to :meth:`ResultsStore.finished_trial_ids`.
#: ``pruned`` is neither a success nor a failure: successive halving stopped a trial that was
#: doing fine but worse than others; its curve and best checkpoint are kept.
FAILURE_STATUSES: frozenset[TrialStatus] = TERMINAL_STATUSES - SUCCESS_STATUSES - {TrialStatus.PRUNED}
#: Outcomes of one batch size in a throughput measurement.
THROUGHPUT_STATUSES: tuple[ThroughputStatus, ...] = tuple(ThroughputStatus)

#: The fields of :class:`TrialRecord`, in column order: the fixed columns of a trials row.
_RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrialRecord))


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


def build_table(
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


def enum_value(value: Any) -> Any:
    """An enum's value (``TrialStatus.COMPLETED`` -> ``"completed"``); anything else unchanged."""
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


def _merge_config(out: dict[str, Any], config: Mapping[str, Any]) -> None:
    # The config is flattened into both trials and throughput rows: clashing with either is refused.
    flat = flatten_config(config)
    clash = sorted(set(flat) & (set(TRIAL_FIXED.names) | set(THROUGHPUT_FIXED.names)))
    if clash:
        raise ValueError(f"config keys {clash} clash with fixed result columns; rename them")
    out.update(flat)


def trial_status(value: Any, trial_id: Optional[str] = None) -> TrialStatus:
    """``value`` (a :class:`~rnn.events.TrialStatus` or its string) as the enum; ValueError listing
    the valid statuses otherwise."""
    try:
        return TrialStatus(value)
    except ValueError:
        raise ValueError(
            f"trial {trial_id}: status {value!r} is not one of {sorted(s.value for s in TrialStatus)}"
        ) from None


def normalize_trial_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a trials row and flatten it for :func:`build_table` with :data:`TRIAL_FIXED`.

    ``row`` holds fixed columns, plus the config as a nested ``"config"`` mapping or as dotted
    keys. Raises ValueError naming an unknown column, a missing ``trial_id``, a status that is
    not a :class:`~rnn.events.TrialStatus` value, or a naive timestamp.
    """
    out: dict[str, Any] = {}
    unknown = []
    for key, value in row.items():
        if key == "config":
            _merge_config(out, value)
        elif key in TRIAL_FIXED.names:
            out[key] = enum_value(value)
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
    out["status"] = trial_status(out.get("status"), tid).value
    for name in ("started_at", "finished_at"):
        out[name] = _timestamp(out.get(name), name)
    return out


def _as_dict(row: Any) -> dict[str, Any]:
    """A record (dataclass instance) or a mapping as a plain dict."""
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    return dict(row)


def eval_rows(trial_id: str, rows: Iterable[Any]) -> list[dict[str, Any]]:
    """``rows`` (``EvalRecord`` objects or mappings with exactly its fields) as
    :data:`EVAL_SCHEMA` dicts of ``trial_id``; ValueError on any other set of fields."""
    names = EVAL_SCHEMA.names[1:]
    out = []
    for row in rows:
        d = _as_dict(row)
        if set(d) != set(names):
            raise ValueError(
                f"trial {trial_id}: an evaluation row has fields {sorted(d)}; expected exactly "
                f"the EvalRecord fields {names}"
            )
        out.append({"trial_id": trial_id, **d})
    return out


def throughput_rows(trial_id: str, rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Validated :data:`THROUGHPUT_FIXED` dicts of ``trial_id`` (without config columns).

    ``rows`` are ``rnn.throughput.ThroughputRow`` objects or mappings with some of its fields (a
    missing one is None; ``is_best`` False). ``is_best`` is stored as given: the best row is
    marked by ``rnn.throughput.mark_best``, once. ValueError on an unknown field, another
    trial's id or a status that is not a ``ThroughputStatus`` value.
    """
    names = THROUGHPUT_FIXED.names
    out = []
    for row in rows:
        d = _as_dict(row)
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"trial {trial_id}: unknown throughput field(s) {unknown}; expected {names[1:]}")
        if d.setdefault("trial_id", trial_id) != trial_id:
            raise ValueError(f"a throughput row of trial {trial_id} names trial {d['trial_id']!r}")
        try:
            d["status"] = ThroughputStatus(d.get("status")).value
        except ValueError:
            raise ValueError(
                f"trial {trial_id}: throughput status {d.get('status')!r} is not one of "
                f"{[s.value for s in THROUGHPUT_STATUSES]}"
            ) from None
        d["is_best"] = bool(d.get("is_best") or False)
        out.append({n: d.get(n) for n in names})
    return out


def trial_record(
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
) -> TrialRecord:
    """The :class:`TrialRecord` of a trial that ended (see :func:`trial_row` for the arguments).

    The fixed columns come from ``info`` first, then from ``result``'s fields of the same names
    where they are set, then from the arguments; ``config_json`` is the trial's resolved config
    (:func:`orchestrator.spec.trial_config`). ValueError on a status that is not a
    :class:`~rnn.events.TrialStatus` value.
    """
    values: dict[str, Any] = {k: v for k, v in (info or {}).items() if k in _RECORD_FIELDS}
    if result is not None:
        for f in dataclasses.fields(result):
            value = getattr(result, f.name)
            if f.name in _RECORD_FIELDS and value is not None:
                values[f.name] = value
    values.update(
        trial_id=trial.trial_id,
        status=trial_status(status, trial.trial_id),
        error=error if error is not None else values.get("error"),
        attempts=attempts,
        started_at=started_at,
        finished_at=finished_at,
        checkpoint=checkpoint,
        config_json=config_to_json(trial_config(trial)),
    )
    return TrialRecord(**values)


def record_row(record: TrialRecord, config: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """A :class:`TrialRecord` as the row :meth:`ResultsStore.commit_trial` takes: the one place a
    record becomes a trials row.

    ``config`` (the trial's nested config) fills the dotted columns; without it, the record's
    ``config_json`` does, so the two always agree. Values stay as they are (a status stays a
    ``TrialStatus``): :func:`normalize_trial_row`, at the Arrow boundary, turns enums into
    their values and checks every column.
    """
    row: dict[str, Any] = {name: getattr(record, name) for name in _RECORD_FIELDS}
    if config is None:
        config = config_from_json(record.config_json)
    if config is not None:
        row["config"] = config
    return row


def trial_row(trial: Any, **fields: Any) -> dict[str, Any]:
    """A trials-table row for :meth:`ResultsStore.commit_trial`: :func:`record_row` of
    :func:`trial_record` (``fields`` are its keyword arguments).

    ``trial`` is an :class:`orchestrator.spec.Trial`: its resolved config is stored whole as
    ``config_json`` and flattened into the dotted columns. ``result`` is
    the ``rnn.events.TrainResult`` when the run ended in the engine, else None (a crash, an
    OOM kill); ``info`` is the ``start`` event's info (params, device, precision, vocab_size,
    corpus_sha256), which fills what a missing result cannot. ``checkpoint`` is the best
    checkpoint's path relative to the job folder (see :meth:`ResultsStore.checkpoint_relpath`).
    A plain dict, so a caller may add or override columns before committing it.
    """
    return record_row(trial_record(trial, **fields))
