"""``clean``: remove what a job folder no longer needs.

Always: temporary files left by writers that were killed mid-write (in the job folder, its
``parts/`` folder and the checkpoint folders). Checkpoints of trials whose status is a failure
(failed, diverged, out of memory, ...). With ``keep_top=N``: every checkpoint except
those of the N trials with the best validation loss. The trials table's ``checkpoint``
column is cleared for each checkpoint removed, so the table never points at a missing file.
Cleaning holds the job lock, so it first compacts the trial parts into the tables; a dry run
takes no lock and reads the tables and parts as they are.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from orchestrator.results.lock import JobLock
from orchestrator.results.store import ResultsStore
from orchestrator.results.tables import FAILURE_STATUSES

log = logging.getLogger(__name__)

#: Temporary files of the atomic writers (``.<name>.<pid>.<hex>.tmp``, ``.<name>.<random>.tmp``).
_TEMP = re.compile(r"^\..+\.tmp$")


@dataclass
class CleanReport:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0


def clean_job(job_dir: str, keep_top: Optional[int] = None, dry_run: bool = False) -> CleanReport:
    """Remove temporary files and unneeded checkpoints under the local folder ``job_dir``.

    ``dry_run`` only lists them, and takes no lock (taking the lock already removes the
    temporary files of writers that are gone).
    """
    root = Path(job_dir)
    report = CleanReport()
    temps = [p for p in root.rglob("*") if p.is_file() and _TEMP.match(p.name)]
    with contextlib.nullcontext() if dry_run else JobLock(root):  # never clean under a running sweep
        store = ResultsStore(root)
        if not dry_run:
            store.compact()  # we hold the lock: fold in what the last run committed
        trials = store.read_trials().to_pylist()
        drop: set[str] = {r["trial_id"] for r in trials if r["status"] in FAILURE_STATUSES}
        if keep_top is not None:
            ranked = sorted(
                (r for r in trials if r["best_val_loss"] is not None and r["status"] not in FAILURE_STATUSES),
                key=lambda r: r["best_val_loss"],
            )
            drop |= {r["trial_id"] for r in ranked[keep_top:]}
        checkpoints = [root / store.checkpoint_relpath(t) for t in sorted(drop)]
        for path in temps + [c for c in checkpoints if c.exists()]:
            report.removed.append(str(path.relative_to(root)))
            if not path.exists():  # a temp file the lock already removed
                continue
            report.freed_bytes += path.stat().st_size
            if dry_run:
                continue
            path.unlink()
            if path.parent.name in drop and not any(path.parent.iterdir()):
                path.parent.rmdir()
        if not dry_run:
            store.clear_checkpoints(drop)
    return report
