"""Sweep expansion: grid x random samples x seeds -> trials with stable ids.

The sweep section of a spec names settings by dotted path (``model.cell``) and gives values
for them:

- ``grid``: a cartesian product, in the order written (the first path varies slowest);
- ``random``: ``samples`` draws from per-path distributions, deterministic given ``seed``
  (Python's ``random.Random``, whose draws are stable across Python versions), so a resumed
  job expands to the same trials. Adding a path to ``space`` changes every sample;
- ``seeds``: every point repeated once per seed (sets ``train.seed``).

A trial's id is a hash of its fully resolved config and the job kind, never of the spec's name,
resources or output, nor of where the trial sits in the sweep: widening a grid later keeps the
ids of the cells that were already there, so finished trials are recognised on resume.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

if TYPE_CHECKING:  # spec.py imports this module; the reverse import is for type checkers only
    from rnn.config import RunConfig, ThroughputConfig

    from orchestrator.spec.schema import JobSpec

logger = logging.getLogger(__name__)

#: A sweep that expands past this many trials is refused (a typo'd grid should not queue a million runs).
MAX_TRIALS = 10_000
SEED_MAX = 2**32 - 1

Seed = Annotated[int, Strict(), Field(ge=0, le=SEED_MAX)]
_PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
_FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
_BoundedInt = Annotated[int, Strict(), Field(ge=-(2**53), le=2**53)]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Range(_Closed):
    @model_validator(mode="after")
    def _low_below_high(self) -> "_Range":
        low, high = getattr(self, "low"), getattr(self, "high")
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


class ChoiceDist(_Closed):
    """One of ``values``, each equally likely."""

    dist: Literal["choice"]
    values: Annotated[list[Any], Field(min_length=1)]


Distribution = Annotated[
    Union[LogUniformDist, UniformDist, IntDist, ChoiceDist], Field(discriminator="dist")
]


class RandomSpec(_Closed):
    """``samples`` points drawn from ``space`` (dotted path -> distribution) with ``seed``."""

    samples: Annotated[int, Strict(), Field(ge=1, le=MAX_TRIALS)]
    seed: Seed = 0
    space: Annotated[dict[str, Distribution], Field(min_length=1)]


class SweepSpec(_Closed):
    """The ``sweep`` section. Paths and swept values are checked against the schema by spec.py."""

    grid: Optional[Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)]] = None
    random: Optional[RandomSpec] = None
    seeds: Optional[Annotated[list[Seed], Field(min_length=1)]] = None

    def size(self) -> int:
        """How many points the sweep expands to (before duplicate random draws are dropped)."""
        n = math.prod(len(values) for values in (self.grid or {}).values())
        n *= self.random.samples if self.random else 1
        n *= len(self.seeds) if self.seeds else 1
        return n


@dataclass(frozen=True)
class Point:
    """One sweep point: the values it sets, and where in the spec each came from."""

    overrides: dict[str, Any]
    origins: dict[str, str]  # dotted path -> e.g. "sweep.grid.model.cell[2]"


def draw(dist: Any, rng: random.Random) -> Any:
    """One value from a distribution model."""
    if isinstance(dist, LogUniformDist):
        return math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    if isinstance(dist, UniformDist):
        return rng.uniform(dist.low, dist.high)
    if isinstance(dist, IntDist):
        return rng.randint(dist.low, dist.high)
    if isinstance(dist, ChoiceDist):
        return copy.deepcopy(rng.choice(dist.values))
    raise TypeError(f"unknown distribution {dist!r}")


def sample_space(spec: RandomSpec) -> list[dict[str, Any]]:
    """The ``spec.samples`` draws, each a {path: value} dict; the same for the same spec."""
    rng = random.Random(spec.seed)
    return [{path: draw(dist, rng) for path, dist in spec.space.items()} for _ in range(spec.samples)]


def sweep_points(sweep: Optional[SweepSpec], *, with_seeds: bool = True) -> list[Point]:
    """Every point of ``sweep`` in order: grid (first path slowest), then samples, then seeds."""
    if sweep is None:
        return [Point({}, {})]
    grid = sweep.grid or {}
    grid_points: list[Point] = [
        Point(
            {path: copy.deepcopy(value) for path, (_, value) in zip(grid, cell)},
            {path: f"sweep.grid.{path}[{i}]" for path, (i, _) in zip(grid, cell)},
        )
        for cell in itertools.product(*(list(enumerate(values)) for values in grid.values()))
    ]
    random_points = [Point({}, {})]
    if sweep.random is not None:
        random_points = [
            Point(sample, {path: f"sweep.random.space.{path} (sample {k})" for path in sample})
            for k, sample in enumerate(sample_space(sweep.random))
        ]
    seed_points = [Point({}, {})]
    if with_seeds and sweep.seeds:
        seed_points = [Point({"train.seed": s}, {"train.seed": f"sweep.seeds[{i}]"}) for i, s in enumerate(sweep.seeds)]
    return [
        Point({**g.overrides, **r.overrides, **s.overrides}, {**g.origins, **r.origins, **s.origins})
        for g in grid_points
        for r in random_points
        for s in seed_points
    ]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats by ``repr``: the same text for the same data."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def trial_id_for(kind: str, config: dict[str, Any]) -> str:
    """12 hex chars of the sha256 of the kind and the fully resolved config."""
    text = canonical_json({"kind": kind, "config": config})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Trial:
    """One run of a job. Treat ``config`` and ``overrides`` as read-only.

    Attributes:
        trial_id: stable id, :func:`trial_id_for` of ``config``.
        config: the fully resolved config, ``{"data", "model", "train"}`` plus ``"throughput"``
            for throughput jobs, as plain JSON types.
        overrides: the swept values, dotted path -> value, always including ``"train.seed"``.
        index: position in the job's trial list.
    """

    trial_id: str
    config: dict[str, Any] = field(hash=False)
    overrides: dict[str, Any] = field(hash=False)
    index: int

    def run_config(self) -> "RunConfig":
        """The engine's :class:`rnn.config.RunConfig` for this trial."""
        from rnn.config import RunConfig

        return RunConfig.from_dict(copy.deepcopy({k: self.config[k] for k in ("data", "model", "train")}))

    def throughput_config(self) -> Optional["ThroughputConfig"]:
        """The engine's :class:`rnn.config.ThroughputConfig`, or None for a train job."""
        from rnn.config import ThroughputConfig

        section = self.config.get("throughput")
        if section is None:
            return None
        sizes = section["batch_sizes"]
        return ThroughputConfig(**{**section, "batch_sizes": sizes if isinstance(sizes, str) else tuple(sizes)})


def expand(spec: "JobSpec") -> list[Trial]:
    """The job's trials, in sweep order; no sweep gives one trial with ``train.seed``.

    Random draws that resolve to a config already in the list (possible with ``choice`` or
    ``int`` distributions) are dropped with a warning: a trial id names one config once.
    """
    trials: list[Trial] = []
    seen: set[str] = set()
    for point in sweep_points(spec.sweep):
        config = spec.resolve(point.overrides)
        trial_id = trial_id_for(spec.kind, config)
        if trial_id in seen:
            logger.warning("%s: dropping a repeated sweep point %s (trial %s)", spec.name, point.overrides, trial_id)
            continue
        seen.add(trial_id)
        overrides = {**point.overrides, "train.seed": config["train"]["seed"]}
        trials.append(Trial(trial_id=trial_id, config=config, overrides=overrides, index=len(trials)))
    return trials
