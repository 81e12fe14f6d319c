"""The job spec: strict YAML, the pydantic schema, the rules, and the sweep's trials.

``load_job(path) -> Job`` is the one way in: it reads the file once, validates every trial
once and gives each its typed :class:`rnn.config.RunConfig` (the engine's dataclasses are the
spec's sections: there is no second schema for them). The modules import one way:
``yamlio`` → ``tracking`` → ``schema`` → ``problems`` → ``sections`` → ``expand`` / ``rules`` → ``validate``
(and ``location`` on ``schema``). Imports neither torch nor ray, so ``validate`` and ``plan``
answer in a fraction of a second.
"""

from orchestrator.spec.expand import Trial, config_dict, trial_config
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
    "config_dict",
    "job_location",
    "load_job",
    "trial_config",
]
