"""Running a job: dispatch trials to workers (Ray's actors, or this process), retry what was lost.

Ray is imported inside the functions that need it, never at import time: a run on
:class:`LocalBackend` never imports it.
"""

from orchestrator.run.local_backend import LocalBackend
from orchestrator.run.runner import RunOutcome, run_job

__all__ = ["LocalBackend", "RunOutcome", "run_job"]
