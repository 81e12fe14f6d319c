"""Running a job: connect to Ray, dispatch trials to trainer actors, retry what was lost.

Ray is imported inside the functions that need it, never at import time.
"""

from orchestrator.run.runner import RunOutcome, run_job

__all__ = ["RunOutcome", "run_job"]
