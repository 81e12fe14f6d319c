"""``clean``: remove what a job folder no longer needs.

Always: temporary files left by writers that were killed mid-write. Checkpoints of trials
that failed, diverged or ran out of memory. With ``keep_top=N``: every checkpoint except
those of the N best trials, ranked as the report ranks them
(:func:`~orchestrator.results.ranking.ranking_metric`: bits per character when the
tokenization varies, else validation loss). The trials table's ``checkpoint`` column is
cleared for each checkpoint removed, so the table never points at a missing file.

Nothing outside the job folder is ever touched: a folder whose own entries (``checkpoints``,
``parts``, a ``checkpoints/<id>``, ...) are symbolic links is refused as the lock is taken
(:func:`~orchestrator.results.storage.refuse_links`); links are not followed anywhere else
either (a ``--dry-run`` lists such a link as skipped), and a trial id that cannot name a folder
is skipped.
Cleaning holds the job lock, so it first compacts the trial parts into the tables; a dry run
takes no lock and reads the tables and parts as they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from orchestrator.results.lock import JobLock
from orchestrator.results.ranking import rank_trials, ranking_metric
from orchestrator.results.store import ResultsStore
from orchestrator.results.tables import FAILURE_STATUSES

log = logging.getLogger(__name__)

#: Temporary files of the atomic writers (``.<name>.<pid>.<hex>.tmp``, ``.<name>.<random>.tmp``).
_TEMP = re.compile(r"^\..+\.tmp$")


@dataclass
class CleanReport:
    """What ``clean`` removed (paths relative to the job folder), how much, and what it left alone."""

    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    skipped: list[str] = field(default_factory=list)  # one line each: what and why


def _within(root: Path, path: Path) -> bool:
    """Whether ``path`` lies under ``root`` with no symbolic link on the way (``path`` included)."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return False
    node = root
    for part in rel.parts:
        node = node / part
        if part in ("", ".", "..") or node.is_symlink():
            return False
    return True


def _temp_files(root: Path) -> list[Path]:
    """Temporary files under ``root``; symbolic links to folders are not followed."""
    out = []
    for folder, _, names in os.walk(root, followlinks=False):
        out += [Path(folder) / n for n in names if _TEMP.match(n) and not (Path(folder) / n).is_symlink()]
    return sorted(out)


def clean_job(job_dir: str, keep_top: Optional[int] = None, dry_run: bool = False) -> CleanReport:
    """Remove temporary files and unneeded checkpoints under the local folder ``job_dir``.

    ``dry_run`` only lists them, and takes no lock (taking the lock already removes the
    temporary files of writers that are gone).

    Raises:
        ValueError: ``keep_top`` is negative.
        ResultsError: the folder is locked by a running job, or its tables cannot be read.
    """
    if keep_top is not None and keep_top < 0:
        raise ValueError(f"keep_top should be 0 or more (got {keep_top})")
    root = Path(job_dir).absolute()
    report = CleanReport()
    temps = _temp_files(root)
    with contextlib.nullcontext() if dry_run else JobLock(root):  # never clean under a running sweep
        store = ResultsStore(root)
        if not dry_run:
            store.compact()  # we hold the lock: fold in what the last run committed
        trials = store.read_trials().to_pylist()
        drop: set[str] = {r["trial_id"] for r in trials if r["status"] in FAILURE_STATUSES}
        if keep_top is not None:  # every other trial's, pruned ones too; a paused trial may resume
            keep = {r["trial_id"] for r in rank_trials(trials, ranking_metric(trials))[:keep_top]}
            drop |= {r["trial_id"] for r in trials if r["trial_id"] not in keep and r["status"] != "paused"}
        checkpoints: list[Path] = []
        cleared: set[str] = set()  # trials whose checkpoint column is cleared
        for trial_id in sorted(drop):
            try:
                path = root / store.checkpoint_relpath(trial_id)
            except ValueError as e:  # a crafted id such as '../x'
                report.skipped.append(f"trial {trial_id!r}: {e}")
                continue
            if not _within(root, path):
                report.skipped.append(f"{path.relative_to(root)}: a symbolic link; clean never follows one")
                continue
            cleared.add(trial_id)
            if path.exists():
                checkpoints.append(path)
        for path in temps + checkpoints:
            report.removed.append(str(path.relative_to(root)))
            if not path.exists():  # a temp file the lock already removed
                continue
            report.freed_bytes += path.lstat().st_size
            if dry_run:
                continue
            path.unlink()
            if path.parent.name in cleared and not any(path.parent.iterdir()):
                path.parent.rmdir()
        if not dry_run:
            store.clear_checkpoints(cleared)
    for line in report.skipped:
        log.warning("clean %s: skipped %s", root, line)
    return report
