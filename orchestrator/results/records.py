"""Typed records of the job's tables, and the Arrow schemas derived from their fields.

One definition per table, so a column cannot drift between the code that writes a row and the
schema that stores it:

- :class:`TrialRecord` -> :data:`TRIAL_FIXED`, the fixed columns of ``trials.parquet``;
- ``rnn.events.EvalRecord`` -> :data:`EVAL_SCHEMA` (``trial_id`` first), all of ``evals.parquet``;
- ``rnn.throughput.ThroughputRow`` -> :data:`THROUGHPUT_FIXED` (``trial_id`` first), the fixed
  columns of ``throughput.parquet``.

``trials.parquet`` and ``throughput.parquet`` go on with the trial config flattened into dotted
columns (``model.cell``, see :func:`orchestrator.results.tables.flatten_config`); a trials row
also holds the whole config as JSON text in its fixed ``config_json`` column. Python types map
to Arrow as ``str`` -> string, ``int`` -> int64, ``float`` -> float64, ``bool`` -> bool,
``datetime`` -> timestamp[us, UTC], a ``str`` Enum -> string (its value); ``Optional[X]`` as X
(every column is nullable). A field's ``metadata={"arrow": type}`` overrides the mapping
(``attempts`` is int32). :func:`trial_records`, :func:`eval_records` and
:func:`throughput_records` read tables back into records.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Optional

import pyarrow as pa

from rnn.events import EvalRecord, TrialStatus
from rnn.throughput_row import ThroughputRow

__all__ = [
    "ADDED_COLUMNS",
    "EVAL_SCHEMA",
    "THROUGHPUT_FIXED",
    "TRIAL_FIXED",
    "TrialRecord",
    "arrow_fields",
    "config_from_json",
    "config_to_json",
    "eval_records",
    "throughput_records",
    "trial_records",
    "with_added_columns",
]

TIMESTAMP = pa.timestamp("us", tz="UTC")




@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """The fixed columns of one ``trials.parquet`` row, in column order.

    ``status`` is a :class:`~rnn.events.TrialStatus` (stored as its value); ``checkpoint`` is
    relative to the job folder; ``started_at``/``finished_at`` are timezone-aware (UTC). The
    metrics are None when the trial ended without an evaluation (a crash, an OOM kill).
    """

    trial_id: str
    status: TrialStatus
    best_val_loss: Optional[float] = None
    best_val_bpc: Optional[float] = None
    best_val_accuracy: Optional[float] = None
    best_step: Optional[int] = None
    params: Optional[int] = None
    steps: Optional[int] = None
    device: Optional[str] = None
    precision: Optional[str] = None
    train_time_s: Optional[float] = None
    started_at: Optional[dt.datetime] = None
    finished_at: Optional[dt.datetime] = None
    error: Optional[str] = None
    checkpoint: Optional[str] = None
    attempts: Optional[int] = dataclasses.field(default=None, metadata={"arrow": pa.int32()})
    corpus_sha256: Optional[str] = None
    vocab_size: Optional[int] = None
    #: The layer-norm LSTM's recurrence path (``fused-cpu``, ``triton``, ``torch``; from the
    #: ``start`` event); None for the other cells.
    recurrence: Optional[str] = None
    #: ``train.compile``: whether the training forward ran ``torch.compile``d, and the seconds the
    #: compile took at set-up (0 when not compiled; from the ``start`` event).
    compiled: Optional[bool] = None
    compile_s: Optional[float] = None
    #: Whether float32 matmuls ran TF32 (CUDA from Ampere on, see ``rnn.device.use_tf32``; from
    #: the ``start`` event).
    tf32: Optional[bool] = None
    #: The trial's resolved config (``orchestrator.spec.trial_config``) as one JSON text, in its
    #: own key order (see :func:`config_to_json`): what ``best`` writes out, exactly, without
    #: expanding the spec again. The flattened dotted columns beside it stay for the report's
    #: tables. None in rows written before it existed, and in rows not built by ``trial_row``.
    config_json: Optional[str] = None
    #: The validation loss of token frequencies alone (``rnn.data.LMData.unigram_loss``, from the
    #: ``start`` event): the report's floor for "this model learned something".
    unigram_loss: Optional[float] = None
    #: Of ``train_time_s``, the seconds spent evaluating (None: written before it existed).
    eval_time_s: Optional[float] = None
    #: The share of the held-out split's characters each evaluation read
    #: (``rnn.data.LMData.val_coverage``: 1.0 all of it, less under ``data.val_max_chars``).
    val_coverage: Optional[float] = None


def config_to_json(config: Mapping[str, Any]) -> str:
    """The ``config_json`` text of a resolved config (plain JSON types, as ``config_dict`` makes it).

    Keys keep their order (a ``best.yaml`` written from it lists them as the spec does), and
    non-ASCII text stays as it is; ``config_from_json`` gives back an equal dict.
    """
    return json.dumps(config, ensure_ascii=False, separators=(",", ":"))


def config_from_json(text: Optional[str]) -> Optional[dict[str, Any]]:
    """A ``config_json`` value parsed (None for None: a row written before the column existed)."""
    if text is None:
        return None
    config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError(f"config_json holds {type(config).__name__}, not a config mapping")
    return config


_SCALARS: dict[type, pa.DataType] = {
    bool: pa.bool_(),  # before int: a bool is an int to Python
    int: pa.int64(),
    float: pa.float64(),
    str: pa.string(),
    dt.datetime: TIMESTAMP,
}


def _arrow_type(owner: type, name: str, hint: Any) -> pa.DataType:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _arrow_type(owner, name, rest[0])
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum) and issubclass(hint, str):
            return pa.string()
        if hint in _SCALARS:
            return _SCALARS[hint]
    # Fail at import, not in the middle of a sweep.
    raise TypeError(
        f"{owner.__name__}.{name} has type {hint!r}; a results record maps only str, int, float, "
        "bool, datetime, str Enums and Optional of those (or set metadata={'arrow': <type>})"
    )


def arrow_fields(cls: type) -> list[pa.Field]:
    """The Arrow fields of a record dataclass's fields, in declaration order (see the module doc)."""
    hints = typing.get_type_hints(cls)
    return [
        pa.field(f.name, f.metadata.get("arrow") or _arrow_type(cls, f.name, hints[f.name]))
        for f in dataclasses.fields(cls)
    ]


_TRIAL_ID = pa.field("trial_id", pa.string())

#: The fixed columns of ``trials.parquet``; flattened config columns (``model.cell``) follow.
TRIAL_FIXED: pa.Schema = pa.schema(arrow_fields(TrialRecord))
#: ``evals.parquet``: ``trial_id`` then exactly the fields of ``rnn.events.EvalRecord``.
EVAL_SCHEMA: pa.Schema = pa.schema([_TRIAL_ID, *arrow_fields(EvalRecord)])
#: The fixed columns of ``throughput.parquet``: ``trial_id`` then ``ThroughputRow``'s fields;
#: flattened config columns follow.
THROUGHPUT_FIXED: pa.Schema = pa.schema([_TRIAL_ID, *arrow_fields(ThroughputRow)])

#: Fixed columns added after a release (``train_objective`` in ``evals.parquet``; ``recurrence``,
#: ``compiled``, ``compile_s`` and ``tf32`` in ``trials.parquet`` and ``throughput.parquet``;
#: ``config_json`` in ``trials.parquet``). A table or part written before one of them existed is
#: read with it null, and the next compaction writes it, instead of being refused as another
#: version's. Add a column here when you add a field to ``TrialRecord``, ``EvalRecord`` or ``ThroughputRow``.
ADDED_COLUMNS: frozenset[str] = frozenset(
    {"train_objective", "recurrence", "compiled", "compile_s", "tf32", "config_json", "unigram_loss", "eval_time_s",
     "val_coverage"}
)


def with_added_columns(table: pa.Table, fixed: pa.Schema) -> pa.Table:
    """``table`` with the :data:`ADDED_COLUMNS` of ``fixed`` it lacks, as nulls in their place.

    Columns come back as ``fixed`` orders them, then any others (config columns) as they were;
    a missing fixed column not in :data:`ADDED_COLUMNS` stays missing, for the caller to refuse.
    """
    absent = [f for f in fixed if f.name in ADDED_COLUMNS and f.name not in table.column_names]
    if not absent:
        return table
    for f in absent:
        table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    have = set(table.column_names)
    return table.select([n for n in fixed.names if n in have] + [n for n in table.column_names if n not in fixed.names])


def _records(cls: type, rows: Iterable[dict[str, Any]]) -> list[Any]:
    names = [f.name for f in dataclasses.fields(cls)]
    return [cls(**{n: row.get(n) for n in names}) for row in rows]


def trial_records(table: pa.Table) -> list[TrialRecord]:
    """The fixed columns of each trials row as a :class:`TrialRecord` (config columns are dropped)."""
    table = with_added_columns(table, TRIAL_FIXED)  # a table written before a column was added
    out = _records(TrialRecord, table.select(TRIAL_FIXED.names).to_pylist())
    return [dataclasses.replace(r, status=TrialStatus(r.status)) for r in out]


def eval_records(table: pa.Table, trial_id: Optional[str] = None) -> list[EvalRecord]:
    """The evaluation rows (of ``trial_id``, or all) as ``EvalRecord``s, in table order."""
    rows = table.to_pylist()
    return _records(EvalRecord, (r for r in rows if trial_id is None or r["trial_id"] == trial_id))


def throughput_records(table: pa.Table, trial_id: Optional[str] = None) -> list[ThroughputRow]:
    """The throughput rows (of ``trial_id``, or all) as ``ThroughputRow``s, in table order."""
    rows = with_added_columns(table, THROUGHPUT_FIXED).select(THROUGHPUT_FIXED.names).to_pylist()
    return _records(ThroughputRow, (r for r in rows if trial_id is None or r["trial_id"] == trial_id))
