"""The job spec: a strict pydantic schema for the YAML a user writes, around the engine's sections.

Every level forbids unknown keys, choice fields are closed sets, numbers are strictly typed
(no ``"5"`` for an int, no ``true`` for a number; an int is fine where a float is expected)
and range-checked, so absurd sizes are refused before anything allocates. The rules that read
several fields at once, and the sweep's trial-by-trial checks, are in
:mod:`orchestrator.spec.rules` and :mod:`orchestrator.spec.validate`; this module knows neither.

A trial's sections (``data``, ``model``, ``train``, ``throughput``) are not modelled here: they
are the engine's dataclasses in :mod:`rnn.config`, limits included, validated straight into by
:mod:`orchestrator.spec.sections`. The ``sweep`` section is :mod:`orchestrator.spec.sweep`
(ASHA's rung arithmetic: :mod:`orchestrator.spec.rungs`). This module holds the rest of what is
the orchestrator's own: the resources, the output location and the job around them (the trackers'
section: :mod:`orchestrator.spec.tracking`).

Relative paths (a corpus file, a local ``output``) are resolved against the current working
directory, like any command-line tool, not against the spec file's directory.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Literal, Optional

from pydantic import Field, Strict, field_validator
from pydantic_core import PydanticCustomError

from orchestrator.spec.base import Section, Text
from orchestrator.spec.sweep import SweepSpec
from orchestrator.spec.tracking import TrackingSpec
from rnn.config import DataConfig, ModelConfig, ThroughputConfig, TrainConfig

Kind = Literal["train", "throughput"]
KINDS: tuple[str, ...] = ("train", "throughput")

#: Largest accepted model (estimated by :func:`orchestrator.spec.rules.estimate_parameters`).
MAX_PARAMETERS = 2_000_000_000
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class ResourcesSpec(Section):
    """``resources``: what one trial reserves, and how many run at once."""

    cpus_per_trial: Annotated[float, Strict(), Field(gt=0, le=1024, allow_inf_nan=False)] = 1.0
    gpus_per_trial: Annotated[float, Strict(), Field(ge=0, le=64, allow_inf_nan=False)] = 0.0
    max_concurrent: Annotated[int, Strict(), Field(ge=1, le=100_000)] = 4
    max_retries: Annotated[int, Strict(), Field(ge=0, le=100)] = 2
    #: A running trial silent this long is killed and retried as lost; None: max(600 s, 5x its
    #: longest gap between events).
    stall_timeout_s: Optional[Annotated[float, Strict(), Field(gt=0, le=1e7, allow_inf_nan=False)]] = None
    #: A hard wall-clock cap per trial: status ``timeout``, not retried.
    trial_timeout_s: Optional[Annotated[float, Strict(), Field(gt=0, le=1e8, allow_inf_nan=False)]] = None
    #: On a cluster without an autoscaler, how long to wait for a node that can host a trial.
    placement_timeout_s: Annotated[float, Strict(), Field(gt=0, le=1e7, allow_inf_nan=False)] = 600.0

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, value: float) -> float:
        if value > 1 and value != int(value):  # Ray shares a GPU by fractions, not several
            raise PydanticCustomError("gpus", "should be a fraction up to 1 (e.g. 0.25) or a whole number")
        return value


def allowed_concurrency(resources: ResourcesSpec, total_cpus: float, total_gpus: float) -> int:
    """Trials that fit at once: ``min(max_concurrent, cpus // cpus_per_trial, gpus // gpus_per_trial)``.

    0 means a single trial asks for more than there is.
    """
    eps = 1e-9  # 1.0 / 0.1 is 9.999...: do not lose a slot to rounding
    fits = min(resources.max_concurrent, math.floor(total_cpus / resources.cpus_per_trial + eps))
    if resources.gpus_per_trial > 0:
        fits = min(fits, math.floor(total_gpus / resources.gpus_per_trial + eps))
    return max(fits, 0)

# --- the sweep section --------------------------------------------------------------------

# --- the job ------------------------------------------------------------------------------

#: Output URI schemes of pyarrow filesystems that keep what is written (``mock://`` and
#: ``memory://`` would lose a whole job's results when the process ends).
PERSISTENT_SCHEMES: tuple[str, ...] = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")


def uri_scheme(value: str) -> Optional[str]:
    """The lower-cased scheme of ``scheme://...``, or None for a plain path."""
    m = _URI_RE.match(value)
    return m.group(1).lower() if m else None


def output_problem(value: str) -> Optional[str]:
    """What is wrong with ``value`` as a results root (``output:`` or ``run --output``), or None."""
    if "\x00" in value:
        return "should not contain a NUL character"
    if "://" not in value:
        return None
    scheme = uri_scheme(value)
    expected = "a local path or a URI of a filesystem that keeps its files: " + ", ".join(
        f"{s}://" for s in PERSISTENT_SCHEMES)
    if scheme is None:
        return f"should be {expected}"
    if scheme not in PERSISTENT_SCHEMES:  # mock:// and memory:// lose the results with the process
        return f"should be {expected} ({scheme}:// is not one of them)"
    if not value[len(scheme) + 3:].strip("/") and scheme != "file":
        return f"should name a folder after {scheme}:// (e.g. {scheme}://bucket/prefix)"
    return None


#: Config sections by name; the trial config holds the first three, plus throughput for throughput jobs.
SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "throughput": ThroughputConfig,
}


def config_sections(kind: Optional[str]) -> tuple[str, ...]:
    """The sections a trial config of this kind holds."""
    return ("data", "model", "train", "throughput") if kind == "throughput" else ("data", "model", "train")


class JobSpec(Section):
    """A validated job: what to run (sections), how to sweep it, with what, and where results go.

    Build it with :func:`orchestrator.spec.load_job`: the sections are the engine's dataclasses,
    validated on their own (:mod:`orchestrator.spec.sections`) and set here as instances, and
    ``JobSpec.model_validate`` alone checks neither them nor the cross-field and sweep rules.
    """

    name: Annotated[str, Strict()]
    kind: Kind = "train"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    throughput: Optional[ThroughputConfig] = None  # kind: throughput only; filled with defaults there
    sweep: Optional[SweepSpec] = None
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    output: Text = "results"  # a local directory or a pyarrow filesystem URI (scheme://...)
    tracking: Optional[TrackingSpec] = None  # TensorBoard / MLflow, written by the driver; not a trial setting

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value) or value in (".", ".."):  # fullmatch: "$" allows a trailing newline
            raise PydanticCustomError(
                "name",
                "should be 1-100 letters, digits, '.', '_' or '-' (not '.' or '..'): it names the results folder",
            )
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        problem = output_problem(value)
        if problem:
            raise PydanticCustomError("output", problem)
        return value

    @property
    def sections(self) -> tuple[str, ...]:
        """The config sections this job's trials hold."""
        return config_sections(self.kind)
