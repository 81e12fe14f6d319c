"""The results of a job folder: typed rows, Arrow tables, atomic storage, lock and manifest.

Everything that reads or writes ``<output>/<name>/`` goes through this package; ``run`` writes
through it and ``report`` reads through it.

- :mod:`~orchestrator.results.tables`: Arrow schemas, statuses, row validation, ``flatten_config``;
- :mod:`~orchestrator.results.storage`: atomic local / pyarrow-filesystem writes, ``ResultsError``;
- :mod:`~orchestrator.results.store`: :class:`ResultsStore`, the job folder's tables;
- :mod:`~orchestrator.results.lock`: :class:`JobLock`, one writing run at a time;
- :mod:`~orchestrator.results.manifest`: ``manifest.json``;
- :mod:`~orchestrator.results.clean`: temporary files and unneeded checkpoints.
"""

from orchestrator.results.lock import JobLock, ResultsLockedError
from orchestrator.results.manifest import package_versions, read_manifest, write_manifest
from orchestrator.results.storage import ResultsError
from orchestrator.results.store import ResultsStore, fresh_start, trial_row
from orchestrator.results.tables import (
    EVAL_SCHEMA,
    FAILURE_STATUSES,
    SUCCESS_STATUSES,
    TERMINAL_STATUSES,
    THROUGHPUT_FIXED,
    THROUGHPUT_STATUSES,
    TRIAL_FIXED,
    flatten_config,
)

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
