"""The job spec: strict YAML, the pydantic schema, cross-field checks and the sweep's trials.

Imports neither torch nor ray, so ``validate`` and ``plan`` answer in a fraction of a second.
"""

from orchestrator.spec.checks import validate_spec
from orchestrator.spec.schema import JobSpec, ResourcesSpec, allowed_concurrency, load_spec
from orchestrator.spec.sweep import MAX_TRIALS, Trial, expand

__all__ = [
    "MAX_TRIALS",
    "JobSpec",
    "ResourcesSpec",
    "Trial",
    "allowed_concurrency",
    "expand",
    "load_spec",
    "validate_spec",
]
