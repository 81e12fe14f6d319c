"""Trial parts: one small immutable file per finished trial, the commit point of its results.

A part holds everything one trial contributes to the job's three tables: its trials row (the
fixed columns and its flattened config), its evaluations and its throughput rows. It is an
Arrow IPC file of one row: the trials columns, then two nested columns,
``@evals: list<struct<EvalRecord fields>>`` and ``@throughput: list<struct<ThroughputRow fields>>``.
Arrow IPC rather than Parquet because a part is written once and read whole: it costs about
a third of a one-row Parquet file to write and a sixth to read (see ``docs/benchmarks.md``).

Its name is ``parts/<seq>.<status>.<trial_id>.arrow``:

- ``seq`` is a 20-digit commit sequence (nanoseconds since the epoch, strictly increasing per
  job folder), so a directory listing alone gives the commit order;
- ``status`` is the trial's status, so which trials are finished is known from a directory
  listing without opening any part;
- a trial committed again (a ``failed`` trial rerun by a later invocation) gets a new part; the
  newest ``seq`` wins and older parts of the same trial are *superseded*, ignored by readers
  and deleted by the writer right after its commit or by the next compaction.

The part is written to a temporary name and renamed into place (``Storage.write_atomic``,
which fsyncs the file and the folder): that rename is the commit. Nothing here touches the
disk; :class:`orchestrator.results.store.ResultsStore` does. The ``merge_*`` functions give the
union of a table and parts that readers see and compaction writes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.results.records import EVAL_SCHEMA, THROUGHPUT_FIXED, TRIAL_FIXED, with_added_columns
from orchestrator.results.tables import build_table

__all__ = [
    "EVALS_COLUMN",
    "PARTS_DIR",
    "THROUGHPUT_COLUMN",
    "Part",
    "PartListing",
    "PartRef",
    "check_trial_id",
    "decode_part",
    "encode_part",
    "list_parts",
    "merge_evals",
    "merge_throughput",
    "merge_trials",
]

PARTS_DIR = "parts"
SUFFIX = ".arrow"
#: The nested columns; ``@`` cannot start a config column, which is dotted or a plain key
#: checked against these names.
EVALS_COLUMN = "@evals"
THROUGHPUT_COLUMN = "@throughput"
_FORMAT_KEY, _FORMAT = b"rnn_orchestrator.part", b"1"

_SEQ_DIGITS = 20
# A trial id must be usable as (part of) a file name on any filesystem: the orchestrator's
# are 12 hex characters; tests and hand-made rows use short names.
_TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,199}")
_NAME = re.compile(rf"(?P<seq>\d{{{_SEQ_DIGITS}}})\.(?P<status>[a-z_]+)\.(?P<trial_id>.+){re.escape(SUFFIX)}")

_EVAL_STRUCT = pa.struct(list(EVAL_SCHEMA)[1:])
_THROUGHPUT_STRUCT = pa.struct(list(THROUGHPUT_FIXED)[1:])


def check_trial_id(trial_id: str) -> None:
    """ValueError unless ``trial_id`` can name a part file (letters, digits, ``_.+=-``)."""
    if not isinstance(trial_id, str) or not _TRIAL_ID.fullmatch(trial_id):
        raise ValueError(
            f"trial_id {trial_id!r} cannot name a results file (expected 1-200 characters of "
            "letters, digits and _.+=-, starting with a letter or digit)"
        )


@dataclass(frozen=True, order=True)
class PartRef:
    """A part as named on disk (ordered by commit sequence)."""

    seq: int
    trial_id: str
    status: str

    @property
    def name(self) -> str:
        return f"{self.seq:0{_SEQ_DIGITS}d}.{self.status}.{self.trial_id}{SUFFIX}"

    @property
    def relpath(self) -> str:
        """The part's path relative to the job folder."""
        return f"{PARTS_DIR}/{self.name}"

    @classmethod
    def parse(cls, name: str) -> Optional[PartRef]:
        """The part a file name denotes, or None for anything else (a writer's temporary file)."""
        m = _NAME.fullmatch(name)
        if m is None or not _TRIAL_ID.fullmatch(m["trial_id"]):
            return None
        return cls(int(m["seq"]), m["trial_id"], m["status"])


@dataclass(frozen=True)
class PartListing:
    """The parts of a job folder: the newest per trial in commit order, and the superseded ones."""

    latest: tuple[PartRef, ...]
    superseded: tuple[PartRef, ...]

    @property
    def max_seq(self) -> int:
        return max((r.seq for r in (*self.latest, *self.superseded)), default=0)


def list_parts(names: Iterable[str]) -> PartListing:
    """Resolve the file names of ``parts/``: newest ``seq`` per trial wins; others are superseded."""
    newest: dict[str, PartRef] = {}
    superseded: list[PartRef] = []
    for ref in sorted(r for r in map(PartRef.parse, names) if r is not None):
        if ref.trial_id in newest:
            superseded.append(newest[ref.trial_id])
        newest[ref.trial_id] = ref
    return PartListing(tuple(sorted(newest.values())), tuple(superseded))


@dataclass(frozen=True)
class Part:
    """A decoded part: the normalised trials row (fixed and config columns), its evaluations as
    an :data:`EVAL_SCHEMA` table and its throughput rows (fixed columns, without config)."""

    ref: PartRef
    row: dict[str, Any]
    evals: pa.Table
    throughput: list[dict[str, Any]]

    @property
    def config(self) -> dict[str, Any]:
        """The trial's flattened config columns (what each of its throughput rows carries)."""
        return {k: v for k, v in self.row.items() if k not in TRIAL_FIXED.names}


def encode_part(row: dict[str, Any], evals: list[dict[str, Any]], throughput: list[dict[str, Any]]) -> pa.Table:
    """The one-row table of a part, from a row of ``normalize_trial_row`` and validated evaluation
    and throughput dicts (``trial_id`` included, dropped here). ValueError on any value that does
    not fit its column, so a bad record fails before anything is written."""
    clash = sorted({EVALS_COLUMN, THROUGHPUT_COLUMN} & set(row))
    if clash:
        raise ValueError(f"trial {row.get('trial_id')}: config keys {clash} are reserved; rename them")
    trial = build_table(TRIAL_FIXED, [row])
    nested = {
        EVALS_COLUMN: (evals, _EVAL_STRUCT),
        THROUGHPUT_COLUMN: (throughput, _THROUGHPUT_STRUCT),
    }
    for name, (items, struct) in nested.items():
        fields = [f.name for f in struct]
        values = [{k: item.get(k) for k in fields} for item in items]
        try:
            array = pa.array([values], type=pa.list_(struct))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
            raise ValueError(f"trial {row.get('trial_id')}: a {name[1:]} row does not fit {struct} ({e})") from e
        trial = trial.append_column(pa.field(name, array.type), array)
    return trial.replace_schema_metadata({_FORMAT_KEY: _FORMAT})


def decode_part(ref: PartRef, table: pa.Table, where: str) -> Part:
    """A part file's table as a :class:`Part`; ValueError naming ``where`` when it is not one."""
    if table.num_rows != 1 or EVALS_COLUMN not in table.column_names or THROUGHPUT_COLUMN not in table.column_names:
        raise ValueError(f"{where} is not a trial part (expected one row with {EVALS_COLUMN} and {THROUGHPUT_COLUMN})")
    evals = table.column(EVALS_COLUMN).combine_chunks().flatten()  # StructArray, one item per evaluation
    tid = ref.trial_id
    eval_table = EVAL_SCHEMA.empty_table()
    if len(evals):
        names = ["trial_id", *(evals.type.field(i).name for i in range(evals.type.num_fields))]
        eval_table = with_added_columns(  # a part written before an EvalRecord field was added
            pa.Table.from_arrays([pa.array([tid] * len(evals), pa.string()), *evals.flatten()], names=names),
            EVAL_SCHEMA,
        )
        if eval_table.column_names != EVAL_SCHEMA.names:
            raise ValueError(f"{where}: its evaluations have the fields {eval_table.column_names[1:]}, expected "
                             f"{EVAL_SCHEMA.names[1:]} (written by another version)")
        eval_table = eval_table.cast(EVAL_SCHEMA)
    throughput = [{"trial_id": tid, **t} for t in table.column(THROUGHPUT_COLUMN)[0].as_py() or []]
    row = table.drop_columns([EVALS_COLUMN, THROUGHPUT_COLUMN]).to_pylist()[0]
    return Part(ref, row, eval_table, throughput)


# --- the union of a table and parts (a part wins over the table rows of its trial) -------------


def merge_trials(table: pa.Table, parts: list[Part]) -> pa.Table:
    """Table rows with each part's row in its trial's place; trials new to the table appended."""
    rows = table.to_pylist()
    at = {r["trial_id"]: i for i, r in enumerate(rows)}
    for part in parts:
        tid = part.row["trial_id"]
        if tid in at:
            rows[at[tid]] = part.row
        else:
            at[tid] = len(rows)
            rows.append(part.row)
    return build_table(TRIAL_FIXED, rows, table.schema)


def _replaced(table: pa.Table, parts: list[Part]) -> pa.Table:
    ids = pa.array([p.ref.trial_id for p in parts], pa.string())
    return table.filter(pc.invert(pc.is_in(table["trial_id"], value_set=ids)))


def merge_evals(table: pa.Table, parts: list[Part]) -> pa.Table:
    """Table rows of trials without a part, then each part's evaluations in commit order."""
    return pa.concat_tables([_replaced(table, parts), *(p.evals for p in parts)])


def merge_throughput(table: pa.Table, parts: list[Part]) -> pa.Table:
    """Table rows of trials without a part, then each part's rows (with its config) in commit order."""
    kept = _replaced(table, parts).to_pylist()
    new = [{**r, **p.config} for p in parts for r in p.throughput]
    return build_table(THROUGHPUT_FIXED, kept + new, table.schema)
