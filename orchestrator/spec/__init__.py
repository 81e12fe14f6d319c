"""The job spec: strict YAML, the pydantic schema, the rules, and the sweep's trials.

``load_job(path) -> Job`` is the one way in: it reads the file once, validates every trial
once and gives each its typed :class:`rnn.config.RunConfig`. The modules import one way:
``yamlio`` → ``schema`` → ``problems`` → ``expand`` / ``rules`` → ``validate`` (and
``location`` on ``schema``). Imports neither torch nor ray, so ``validate`` and ``plan``
answer in a fraction of a second.
"""

from orchestrator.spec.expand import Trial
from orchestrator.spec.location import job_location
from orchestrator.spec.schema import JobSpec, ResourcesSpec, allowed_concurrency
from orchestrator.spec.validate import Job, build_job, load_job

__all__ = [
    "Job",
    "JobSpec",
    "ResourcesSpec",
    "Trial",
    "allowed_concurrency",
    "build_job",
    "job_location",
    "load_job",
]
