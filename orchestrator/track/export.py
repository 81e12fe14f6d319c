"""``export``: a finished (or interrupted) job folder written to TensorBoard and/or MLflow, from its
Parquet tables, as a run with ``tracking:`` would have written it. Idempotent: what a tracker
already holds is not written again, so an export can be repeated, or follow a tracked run."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from orchestrator.results import JobLock, ResultsStore, read_manifest
from orchestrator.spec.tracking import TrackingSpec
from orchestrator.track import TENSORBOARD_DIR, Tracker, sink_openers, sync_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exported:
    trials: int
    failed: list[str]


def job_name(job_dir: str) -> str:
    """The job's name, from its manifest's latest run (else the folder's name)."""
    manifest = read_manifest(job_dir) or {}
    name = manifest.get("name")
    runs = manifest.get("runs")
    if isinstance(runs, list) and runs and isinstance(runs[-1], dict):
        name = runs[-1].get("name", name)
    return name if isinstance(name, str) and name else Path(job_dir).resolve().name


def export_job(job_dir: str, tracking: TrackingSpec, tensorboard_dir: Optional[str] = None) -> Exported:
    """Write the job folder to the trackers ``tracking`` names, holding the folder's lock.

    Raises:
        ResultsLockedError: a run holds the folder.
        DamagedFolderError / ResultsError: a table cannot be read.
    """
    lock = JobLock(job_dir).acquire()
    try:
        store = ResultsStore(job_dir)
        tracker = Tracker(sink_openers(tracking, job_name(job_dir), store, tensorboard_dir))
        try:
            trials = sync_folder(tracker, store)
            reports = [Path(store.location(name)) for name in ("report.md", "report.html")]
            tracker.finish([p for p in reports if p.is_file()])
        finally:
            tracker.close(timeout=None)
        return Exported(trials, tracker.failed)
    finally:
        lock.release()


__all__ = ["TENSORBOARD_DIR", "Exported", "export_job", "job_name"]
