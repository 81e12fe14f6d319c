"""One job folder as this process sees it: where its files are, and what the stores on it share.

A :class:`JobFolder` is made once per job folder by whoever opens it, and handed to every
:class:`~orchestrator.results.store.ResultsStore` that should share it (``ResultsStore(folder)``,
or ``ResultsStore(store.folder)``). There is no registry of folders: two stores made from the same
*path* are independent, which is safe for readers and for writers that take turns (each lists
``parts/`` afresh), while writers that may overlap in one process share one object, so their
commits and compactions are serialised by its mutex and see one newest-part map. Across
processes, :class:`~orchestrator.results.lock.JobLock` keeps a single writer.

It holds:

- ``storage``: atomic local or pyarrow-filesystem access under the folder;
- ``mutex``: held by a commit's rename and bookkeeping, a compaction and ``clear_checkpoints``;
- each trial's newest part (:meth:`newest_parts`), built from one listing at the first commit and
  kept current after, so a commit never lists the folder (its cost does not grow with the parts);
- decoded parts: a part is immutable, so it is decoded once for as long as its file exists;
- reading and writing the three tables (``trials.parquet``, ``evals.parquet``, ``throughput.parquet``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.results.parts import PARTS_DIR, Part, PartListing, PartRef, decode_part, list_parts
from orchestrator.results.records import with_added_columns
from orchestrator.results.storage import DamagedFolderError, Storage, open_storage, repair_hint

__all__ = ["EVALS_FILE", "THROUGHPUT_FILE", "TRIALS_FILE", "JobFolder"]

TRIALS_FILE = "trials.parquet"
EVALS_FILE = "evals.parquet"
THROUGHPUT_FILE = "throughput.parquet"


class JobFolder:
    """A job folder's storage and the in-process state every store on it shares (see the module doc).

    ``filesystem`` (optional) is a ``pyarrow.fs.FileSystem`` on which ``job_dir`` is a path;
    without it ``job_dir`` is a local path or a URI. Nothing is created until the first write.
    """

    def __init__(self, job_dir: str | os.PathLike[str], filesystem: Any = None) -> None:
        self.storage: Storage = open_storage(job_dir, filesystem)
        self.mutex = threading.RLock()
        #: The newest commit's sequence number this process knows of; a commit takes a larger one.
        self.last_seq = 0
        self._newest: Optional[dict[str, PartRef]] = None
        self._decoded: dict[PartRef, Part] = {}

    @property
    def root(self) -> str:
        """The job folder (a local path, or a path on the folder's filesystem)."""
        return self.storage.root

    def location(self, relpath: str) -> str:
        """Where ``relpath`` (relative to the job folder) lives."""
        return self.storage.location(relpath)

    # --- parts ------------------------------------------------------------------------------

    def listing(self) -> PartListing:
        """One listing of ``parts/``: each trial's newest part, and the superseded ones."""
        return list_parts(self.storage.list_names(PARTS_DIR))

    def newest_parts(self) -> dict[str, PartRef]:
        """Trial id -> its newest part, listed once and then kept current by commits and
        compactions through this object (call it under :attr:`mutex`; the map is changed in place)."""
        if self._newest is None:
            listing = self.listing()
            self._newest = {r.trial_id: r for r in listing.latest}
            self.last_seq = max(self.last_seq, listing.max_seq)
        return self._newest

    def compacted(self, refs: Iterable[PartRef]) -> None:
        """Forget ``refs`` (folded into the tables and deleted) as any trial's newest part."""
        if self._newest is None:
            return
        for ref in refs:
            if self._newest.get(ref.trial_id) == ref:
                del self._newest[ref.trial_id]

    def load(self, refs: Iterable[PartRef]) -> list[Part]:
        """The decoded parts of ``refs`` (in that order), reading only those not seen before; a
        part gone since its listing (compacted, or superseded and deleted) is left out."""
        out = []
        for ref in refs:
            part = self._decoded.get(ref)
            if part is None:
                table = self.storage.read_ipc(ref.relpath)
                if table is None:  # compacted since the listing: its rows are in the tables
                    continue
                try:
                    part = decode_part(ref, table, self.location(ref.relpath))
                except ValueError as e:
                    raise DamagedFolderError(
                        f"{e}; {repair_hint(self.root)} (that trial then runs again)"
                    ) from e
                self._decoded[ref] = part
            out.append(part)
        return out

    def delete_part(self, ref: PartRef) -> None:
        """Delete a part's file (ResultsError when that fails) and its decoded copy."""
        self.storage.delete(ref.relpath)
        self._decoded.pop(ref, None)

    # --- tables -----------------------------------------------------------------------------

    def read_table(self, relpath: str, fixed: pa.Schema, exact: bool) -> pa.Table:
        """A table with the fixed columns ``fixed`` (an empty one when the file does not exist).

        Columns added since the file was written are filled with nulls; any other missing fixed
        column (or, with ``exact``, any other set of columns) is a :class:`ResultsError`.
        """
        table = self.storage.read_table(relpath)
        if table is None:
            return fixed.empty_table()
        table = with_added_columns(table, fixed)  # written before a column was added
        missing = [f.name for f in fixed if f.name not in table.column_names]
        if missing or (exact and table.column_names != fixed.names):
            raise DamagedFolderError(
                f"{self.location(relpath)} does not have the expected columns (missing "
                f"{missing or 'none'}); it was written by another version or is damaged: "
                f"{repair_hint(self.root)}"
            )
        return table.cast(fixed) if exact else table

    def write_table(self, relpath: str, table: pa.Table) -> None:
        """Write ``table`` as Parquet, atomically."""
        self.storage.write_atomic(relpath, lambda f: pq.write_table(table, f))
