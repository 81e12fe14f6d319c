"""``repair``: a damaged job folder made usable again, keeping everything that can still be read.

Each file the tool reads is tried as its readers read it: the three tables, every trial part,
the manifest and a search's records. What cannot be read is moved, never deleted, to
``<job>/damaged/<name>.<timestamp>``; then the parts are folded into the tables again, and what
the trials' checkpoints still hold is rebuilt. What is rebuilt and what is lost is said, trial by
trial:

- a damaged ``trials.parquet``: the rows of the trials it held that no part holds. A trial whose
  best checkpoint was written at the end of its full step budget gets its row back from it
  (:mod:`~orchestrator.results.rebuild`: status ``completed``, its metrics, steps and times; what
  no checkpoint holds, such as the device, left empty); every other one runs again at the next
  ``run``, from its best checkpoint where one is kept;
- a damaged ``evals.parquet``: the curves, rebuilt for each trial from its checkpoint's
  evaluations (complete when the checkpoint is from the trial's last step, else up to it); the
  trials' rows stay, so they are not run again;
- a damaged ``throughput.parquet``: those rows (speeds);
- a damaged part: that trial's result (it runs again);
- a damaged manifest: the spec and run records (``best`` needs the spec: the next ``run``
  writes a new manifest);
- a damaged search record (``search/<n>.json``): it and every later record (a search's records
  must run 0, 1, 2, ... without a gap); the search makes those proposals anew.

Only local job folders are repaired, under the job's lock.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass, field

from orchestrator.results.folder import EVALS_FILE, THROUGHPUT_FILE, TRIALS_FILE
from orchestrator.results.lock import JobLock
from orchestrator.results.manifest import MANIFEST_FILE, read_manifest
from orchestrator.results.proposals import STUDY_FILE, proposal_files, read_proposal, read_study
from orchestrator.results.records import EVAL_SCHEMA, THROUGHPUT_FIXED, TRIAL_FIXED
from orchestrator.results.storage import DamagedFolderError, ResultsError
from orchestrator.results.store import ResultsStore

__all__ = ["DAMAGED_DIR", "RepairReport", "repair_job"]

log = logging.getLogger(__name__)

DAMAGED_DIR = "damaged"


@dataclass
class RepairReport:
    """What ``repair`` set aside (relative path -> why), what it rebuilt from checkpoints and what
    was lost, one line each."""

    set_aside: dict[str, str] = field(default_factory=dict)
    rebuilt: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.set_aside)

    def moved(self, rel: str) -> bool:
        """Whether the job folder's ``rel`` was set aside."""
        flat = rel.replace("/", "_")
        return any(os.path.basename(aside).rsplit(".", 1)[0] == flat for aside in self.set_aside)


def repair_job(job_dir: str | os.PathLike[str]) -> RepairReport:
    """Set aside what cannot be read in ``job_dir``, fold the parts into the tables again, and
    say what was lost (see the module docstring).

    Raises:
        ResultsError: the folder is not local, another run holds it, or a file cannot be moved.
    """
    store = ResultsStore(job_dir)
    if not store.is_local:
        raise ResultsError(f"{store.job_dir}: repair works on local job folders only")
    root = store.job_dir
    report = RepairReport()
    with JobLock(root):
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        before = _trial_ids_anywhere(store)
        for rel, schema, exact in ((TRIALS_FILE, TRIAL_FIXED, False), (EVALS_FILE, EVAL_SCHEMA, True),
                                   (THROUGHPUT_FILE, THROUGHPUT_FIXED, False)):
            try:
                store.folder.read_table(rel, schema, exact)
            except DamagedFolderError as e:
                report.set_aside[_move_aside(root, rel, stamp)] = _why(e)
        _parts(store, root, stamp, report)
        try:
            read_manifest(root)
        except DamagedFolderError as e:
            report.set_aside[_move_aside(root, MANIFEST_FILE, stamp)] = _why(e)
            report.lost.append("the manifest (the spec and the run records): the next run writes a new one; "
                               "`best` needs it")
        try:
            read_study(store)
        except DamagedFolderError as e:
            report.set_aside[_move_aside(root, STUDY_FILE, stamp)] = _why(e)
            report.lost.append("what the search's proposals were drawn from: the next run records the spec's")
        _search(store, root, stamp, report)
        fresh = ResultsStore(root)  # nothing of the damaged files cached
        fresh.compact()
        if report.changed:
            _rebuild(fresh, before, report)
        if report.moved(THROUGHPUT_FILE):
            report.lost.append("the throughput rows of the trials compacted into throughput.parquet")
    for rel, why in report.set_aside.items():
        log.info("repair %s: set aside %s (%s)", root, rel, why)
    return report


def _rebuild(store: ResultsStore, before: set[str], report: RepairReport) -> None:
    """What the checkpoints give back of the rows and evaluations lost (:mod:`.rebuild`), then the
    parts that made folded in; every trial still without a row or evaluations said as lost."""
    from orchestrator.results.rebuild import evals_by_trial, rebuild_evals, rebuild_rows

    rows = store.read_trials().to_pylist()
    have = {r["trial_id"] for r in rows}
    evals = evals_by_trial(store.read_evals().to_pylist())
    if report.moved(EVALS_FILE):
        lines = rebuild_evals(store, [r for r in rows if r["trial_id"] not in evals])
        report.rebuilt += [line for line in lines if line.startswith("rebuilt")]
        report.lost += [line.removeprefix("lost: ") for line in lines if line.startswith("lost")]
    gone = before - have
    if gone:
        rebuilt, lost = rebuild_rows(store, gone, evals, scheduled=_scheduled(store.job_dir))
        report.rebuilt += rebuilt
        report.lost += lost
    store.compact()


def _scheduled(root: str) -> bool:
    """Whether the job's spec (the manifest's, when it can be read) schedules successive halving;
    True when it cannot be told (a row is then not rebuilt)."""
    try:
        manifest = read_manifest(root)
    except DamagedFolderError:
        return True
    if manifest is None:
        return True
    texts = [r.get("spec_text") for r in manifest.get("runs") or [] if isinstance(r, dict) and r.get("spec_text")]
    text = texts[-1] if texts else manifest.get("spec_text")
    if not isinstance(text, str):
        return True
    from orchestrator.errors import SpecError
    from orchestrator.spec.yamlio import parse_yaml

    try:
        raw = parse_yaml(text, "manifest.json spec_text")
    except SpecError:
        return True
    if not isinstance(raw, dict):
        return True
    sweep = raw.get("sweep")
    return isinstance(sweep, dict) and sweep.get("scheduler") is not None


def _why(error: BaseException) -> str:
    return " ".join(str(error).split("; ")[0].split())


def _move_aside(root: str, rel: str, stamp: str) -> str:
    """Move ``rel`` to ``damaged/<flattened rel>.<stamp>``; returns the new relative path."""
    target = os.path.join(DAMAGED_DIR, f"{rel.replace('/', '_')}.{stamp}")
    try:
        os.makedirs(os.path.join(root, DAMAGED_DIR), exist_ok=True)
        os.rename(os.path.join(root, rel), os.path.join(root, target))
    except OSError as e:
        raise ResultsError(f"cannot move {os.path.join(root, rel)} aside: {e.strerror or e}") from e
    return target


def _parts(store: ResultsStore, root: str, stamp: str, report: RepairReport) -> None:
    listing = store.folder.listing()
    for ref in (*listing.latest, *listing.superseded):
        try:
            store.folder.load([ref])  # read and decoded as every reader does
        except DamagedFolderError as e:
            report.set_aside[_move_aside(root, ref.relpath, stamp)] = _why(e)
            report.lost.append(f"trial {ref.trial_id}'s {ref.status} part: it runs again at the next run")


def _search(store: ResultsStore, root: str, stamp: str, report: RepairReport) -> None:
    """Search records: the first damaged one and every later one are set aside."""
    files = proposal_files(store)
    bad_from = None
    for k, rel in enumerate(files):
        try:
            read_proposal(store, rel, k)
        except DamagedFolderError as e:
            bad_from = k
            report.set_aside[_move_aside(root, rel, stamp)] = _why(e)
            break
    if bad_from is None:
        return
    for rel in files[bad_from + 1:]:
        report.set_aside[_move_aside(root, rel, stamp)] = "after a damaged search record"
    report.lost.append(f"search proposals {bad_from} and later: the search makes them anew (their trials' rows "
                       "stay, outside the search's history)")


def _trial_ids_anywhere(store: ResultsStore) -> set[str]:
    """Trial ids the folder has any trace of: the readable tables' ids, its checkpoint folders,
    its parts' names."""
    ids: set[str] = set()
    for rel in (TRIALS_FILE, EVALS_FILE):
        try:
            table = store.folder.storage.read_table(rel, columns=["trial_id"])
        except (DamagedFolderError, KeyError, ValueError):
            continue
        if table is not None:
            ids.update(table["trial_id"].to_pylist())
    checkpoints = store.location("checkpoints")
    if os.path.isdir(checkpoints):
        ids.update(name for name in os.listdir(checkpoints) if os.path.isdir(os.path.join(checkpoints, name)))
    listing = store.folder.listing()
    ids.update(r.trial_id for r in (*listing.latest, *listing.superseded))
    return ids
