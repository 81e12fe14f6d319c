"""The results of a job folder: typed records, Arrow tables, trial parts, atomic storage, lock and manifest.

Everything that reads or writes ``<output>/<name>/`` goes through this package; ``run`` writes
through it and ``report`` reads through it.

- :mod:`~orchestrator.results.records`: ``TrialRecord``; the Arrow schemas derived from the records;
- :mod:`~orchestrator.results.tables`: statuses, row validation, ``flatten_config``, ``trial_row``;
- :mod:`~orchestrator.results.parts`: one immutable file per finished trial (the commit point);
- :mod:`~orchestrator.results.storage`: atomic local / pyarrow-filesystem writes, ``ResultsError``;
- :mod:`~orchestrator.results.folder`: :class:`JobFolder`, a job folder's files and what the stores
  on it in one process share (the writers' mutex, the newest part of each trial);
- :mod:`~orchestrator.results.store`: :class:`ResultsStore` (``commit_trial``, ``compact``, reads);
- :mod:`~orchestrator.results.compaction`: parts folded into the tables, ``compact_if_idle``;
- :mod:`~orchestrator.results.lock`: :class:`JobLock`, one writing run at a time;
- :mod:`~orchestrator.results.manifest`: ``manifest.json``, one record per invocation;
- :mod:`~orchestrator.results.clean`: temporary files and unneeded checkpoints;
- :mod:`~orchestrator.results.proposals`: a search's proposal records (``search/``).
"""

from orchestrator.results.compaction import compact_if_idle
from orchestrator.results.folder import JobFolder
from orchestrator.results.lock import JobLock, ResultsLockedError
from orchestrator.results.manifest import manifest_runs, new_run_id, package_versions, read_manifest, write_manifest
from orchestrator.results.records import (
    EVAL_SCHEMA,
    THROUGHPUT_FIXED,
    TRIAL_FIXED,
    TrialRecord,
    eval_records,
    throughput_records,
    trial_records,
)
from orchestrator.results.storage import DamagedFolderError, ResultsError
from orchestrator.results.store import RecordError, ResultsStore, fresh_start, is_job_folder
from orchestrator.results.tables import (
    FAILURE_STATUSES,
    SUCCESS_STATUSES,
    TERMINAL_STATUSES,
    THROUGHPUT_STATUSES,
    flatten_config,
    trial_row,
)

__all__ = [
    "DamagedFolderError",
    "EVAL_SCHEMA",
    "FAILURE_STATUSES",
    "SUCCESS_STATUSES",
    "TERMINAL_STATUSES",
    "THROUGHPUT_FIXED",
    "THROUGHPUT_STATUSES",
    "TRIAL_FIXED",
    "JobFolder",
    "JobLock",
    "RecordError",
    "ResultsError",
    "ResultsLockedError",
    "ResultsStore",
    "TrialRecord",
    "compact_if_idle",
    "eval_records",
    "flatten_config",
    "fresh_start",
    "is_job_folder",
    "manifest_runs",
    "new_run_id",
    "package_versions",
    "read_manifest",
    "throughput_records",
    "trial_records",
    "trial_row",
    "write_manifest",
]
