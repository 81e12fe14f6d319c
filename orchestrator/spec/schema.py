"""The job spec: a strict pydantic schema for the YAML a user writes, around the engine's sections.

Every level forbids unknown keys, choice fields are closed sets, numbers are strictly typed
(no ``"5"`` for an int, no ``true`` for a number; an int is fine where a float is expected)
and range-checked, so absurd sizes are refused before anything allocates. The rules that read
several fields at once, and the sweep's trial-by-trial checks, are in
:mod:`orchestrator.spec.rules` and :mod:`orchestrator.spec.validate`; this module knows neither.

A trial's sections (``data``, ``model``, ``train``, ``throughput``) are not modelled here: they
are the engine's dataclasses in :mod:`rnn.config`, limits included, validated straight into by
:mod:`orchestrator.spec.sections`. This module holds what is the orchestrator's own: the
resources, the sweep (its distributions and ASHA's rung arithmetic) and the job around them.

The ``sweep`` section names settings by dotted path (``model.cell``): ``grid`` (a cartesian
product, the first path varying slowest), ``random`` (``samples`` draws from per-path
distributions, given ``seed``) and ``seeds`` (every point once per ``train.seed``).

Relative paths (a corpus file, a local ``output``) are resolved against the current working
directory, like any command-line tool, not against the spec file's directory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rnn.config import SEED_MAX, DataConfig, ModelConfig, ThroughputConfig, TrainConfig

Kind = Literal["train", "throughput"]
KINDS: tuple[str, ...] = ("train", "throughput")

#: Largest accepted model (estimated by :func:`orchestrator.spec.rules.estimate_parameters`).
MAX_PARAMETERS = 2_000_000_000
#: A sweep that expands past this many trials is refused (a typo'd grid should not queue a million runs).
MAX_TRIALS = 10_000
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_URI_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

_Steps = Annotated[int, Strict(), Field(ge=1, le=10**9)]
_Text = Annotated[str, Strict(), Field(min_length=1, max_length=4096)]
Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ResourcesSpec(_Section):
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

_PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
_FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
_BoundedInt = Annotated[int, Strict(), Field(ge=-(2**53), le=2**53)]


class _Range(_Section):
    if TYPE_CHECKING:  # each subclass declares them, with its own type
        low: Any
        high: Any

    @model_validator(mode="after")
    def _low_below_high(self) -> _Range:
        low, high = self.low, self.high
        if not low < high:
            raise ValueError(f"low must be less than high (got low {low!r}, high {high!r})")
        return self


class LogUniformDist(_Range):
    """``exp(uniform(log(low), log(high)))``: for scales such as learning rates; 0 < low < high."""

    dist: Literal["loguniform"]
    low: _PositiveFloat
    high: _PositiveFloat


class UniformDist(_Range):
    """A float drawn uniformly from ``[low, high]``."""

    dist: Literal["uniform"]
    low: _FiniteFloat
    high: _FiniteFloat


class IntDist(_Range):
    """An integer drawn uniformly from ``low..high``, both included."""

    dist: Literal["int"]
    low: _BoundedInt
    high: _BoundedInt


class ChoiceDist(_Section):
    """One of ``values``, each equally likely."""

    dist: Literal["choice"]
    values: Annotated[list[Any], Field(min_length=1)]


Distribution = Annotated[
    Union[LogUniformDist, UniformDist, IntDist, ChoiceDist], Field(discriminator="dist")
]


class RandomSpec(_Section):
    """``samples`` points drawn from ``space`` (dotted path -> distribution) with ``seed``."""

    samples: Annotated[int, Strict(), Field(ge=1, le=MAX_TRIALS)]
    seed: Seed = 0
    space: Annotated[dict[str, Distribution], Field(min_length=1)]


AshaMetric = Literal["val_loss", "val_bpc"]


class AshaSpec(_Section):
    """``sweep.scheduler``: asynchronous successive halving with promotion (Li et al. 2018).

    Rungs sit at ``grace_steps * reduction_factor**k`` steps below ``max_steps``; a trial runs to
    its next rung and pauses, and the best ``1/reduction_factor`` of those recorded at a rung
    are resumed to the next one (see :mod:`orchestrator.run.asha`). ``max_steps`` is the full
    budget: it must equal ``train.max_steps`` (null: taken from it).
    """

    type: Literal["asha"]
    metric: AshaMetric = "val_loss"
    grace_steps: _Steps
    reduction_factor: Annotated[int, Strict(), Field(ge=2, le=100)] = 3
    max_steps: Optional[_Steps] = None


def asha_rungs(grace_steps: int, reduction_factor: int, max_steps: int) -> tuple[int, ...]:
    """The rung steps: ``grace * rf**k`` below ``max_steps``, then ``max_steps`` itself (the last
    rung is the full budget, where a trial completes instead of pausing)."""
    rungs: list[int] = []
    step = grace_steps
    while step < max_steps:
        rungs.append(step)
        step *= reduction_factor
    return (*rungs, max_steps)


def promotion_caps(n_trials: int, rungs: int, reduction_factor: int) -> list[int]:
    """Trials leaving each pause rung upwards under synchronous halving: ``max(1, A_k // rf)``,
    where ``A_0`` is ``n_trials`` and ``A_{k+1}`` the count before it (see
    :mod:`orchestrator.run.asha`)."""
    caps, arriving = [], n_trials
    for _ in range(rungs):
        cap = max(1, arriving // reduction_factor) if arriving else 0
        caps.append(cap)
        arriving = cap
    return caps


def worst_promotions(n_trials: int, rungs: int, reduction_factor: int) -> list[int]:
    """The most trials asynchronous halving can promote from each pause rung: ``A_k - rf + 1``
    (each arrival better than all before it is promoted once ``rf`` have arrived), at least 1."""
    out, arriving = [], n_trials
    for _ in range(rungs):
        arriving = max(min(arriving, 1), arriving - reduction_factor + 1)
        out.append(arriving)
    return out


def _steps(arriving: Sequence[int], rungs: Sequence[int]) -> int:
    total, previous = 0, 0
    for count, step in zip(arriving, rungs, strict=True):
        total += count * (step - previous)
        previous = step
    return total


def budget_steps(n_trials: int, rungs: Sequence[int], reduction_factor: int) -> int:
    """Training steps synchronous halving spends on ``n_trials`` trials (``rungs`` ends with
    max_steps): what asynchronous halving spends when arrivals come in no particular order."""
    return _steps([n_trials, *promotion_caps(n_trials, len(rungs) - 1, reduction_factor)], rungs)


def worst_budget_steps(n_trials: int, rungs: Sequence[int], reduction_factor: int) -> int:
    """The most training steps asynchronous halving can spend (the worst arrival order), not
    counting steps redone after a lost worker."""
    return _steps([n_trials, *worst_promotions(n_trials, len(rungs) - 1, reduction_factor)], rungs)


#: A variant: dotted path -> value, e.g. ``{"model.cell": "lstm", "model.layer_norm": True}``.
Variant = dict[str, Any]


class SweepSpec(_Section):
    """The ``sweep`` section. Paths and swept values are checked against the sections by
    :mod:`orchestrator.spec.validate`."""

    grid: Optional[Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)]] = None
    random: Optional[RandomSpec] = None
    variants: Optional[Annotated[list[Variant], Field(min_length=1)]] = None
    seeds: Optional[Annotated[list[Seed], Field(min_length=1)]] = None
    scheduler: Optional[AshaSpec] = None

    def size(self) -> int:
        """How many points the sweep expands to (before duplicate random draws are dropped)."""
        n = math.prod(len(values) for values in (self.grid or {}).values())
        n *= self.random.samples if self.random else 1
        n *= len(self.variants) if self.variants else 1
        n *= len(self.seeds) if self.seeds else 1
        return n


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


class JobSpec(_Section):
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
    output: _Text = "results"  # a local directory or a pyarrow filesystem URI (scheme://...)

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
