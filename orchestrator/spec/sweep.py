"""The ``sweep`` section: grid, random draws and their distributions, TPE proposals, variants,
seeds, and the successive-halving scheduler.

Paths name settings by dotted path (``model.cell``): ``grid`` (a cartesian product, the first
path varying slowest), ``random`` (``samples`` draws from per-path distributions, given
``seed``), ``tpe`` (``samples`` points proposed one at a time from the results so far, with
the same distributions), ``variants`` (named combinations) and ``seeds`` (every point once per
``train.seed``). Paths and swept values are checked against the sections by
:mod:`orchestrator.spec.validate`; the expansion is :mod:`orchestrator.spec.expand`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

from pydantic import Field, Strict, model_validator

from orchestrator.spec.base import Section, Seed, Steps

#: A sweep that expands past this many trials is refused (a typo'd grid should not queue a million runs).
MAX_TRIALS = 10_000

_PositiveFloat = Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
_FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
_BoundedInt = Annotated[int, Strict(), Field(ge=-(2**53), le=2**53)]


class _Range(Section):
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


class ChoiceDist(Section):
    """One of ``values``, each equally likely."""

    dist: Literal["choice"]
    values: Annotated[list[Any], Field(min_length=1)]


Distribution = Annotated[
    Union[LogUniformDist, UniformDist, IntDist, ChoiceDist], Field(discriminator="dist")
]


class RandomSpec(Section):
    """``samples`` points drawn from ``space`` (dotted path -> distribution) with ``seed``."""

    samples: Annotated[int, Strict(), Field(ge=1, le=MAX_TRIALS)]
    seed: Seed = 0
    space: Annotated[dict[str, Distribution], Field(min_length=1)]


AshaMetric = Literal["val_loss", "val_bpc"]


class TpeSpec(Section):
    """``sweep.tpe``: ``samples`` points proposed one at a time by Optuna's TPE sampler from the
    trials so far (the first ``startup`` are random draws), in ``space`` (as ``random.space``).

    ``metric`` is what it minimises, each proposal's best evaluation (the mean over its seeds);
    default: the scheduler's metric, else ``val_loss``. The search itself is
    :mod:`orchestrator.run.tpe`.
    """

    samples: Annotated[int, Strict(), Field(ge=1, le=MAX_TRIALS)]
    seed: Seed = 0
    startup: Annotated[int, Strict(), Field(ge=1, le=MAX_TRIALS)] = 10
    metric: Optional[AshaMetric] = None
    space: Annotated[dict[str, Distribution], Field(min_length=1)]


class AshaSpec(Section):
    """``sweep.scheduler``: asynchronous successive halving with promotion (Li et al. 2018).

    Rungs sit at ``grace_steps * reduction_factor**k`` steps below ``max_steps``; a trial runs to
    its next rung and pauses, and the best ``1/reduction_factor`` of those recorded at a rung
    are resumed to the next one (see :mod:`orchestrator.run.asha`). ``max_steps`` is the full
    budget: it must equal ``train.max_steps`` (null: taken from it).
    """

    type: Literal["asha"]
    metric: AshaMetric = "val_loss"
    grace_steps: Steps
    reduction_factor: Annotated[int, Strict(), Field(ge=2, le=100)] = 3
    max_steps: Optional[Steps] = None


#: A variant: dotted path -> value, e.g. ``{"model.cell": "lstm", "model.layer_norm": True}``.
Variant = dict[str, Any]


class SweepSpec(Section):
    """The ``sweep`` section. Paths and swept values are checked against the sections by
    :mod:`orchestrator.spec.validate`."""

    grid: Optional[Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]], Field(min_length=1)]] = None
    random: Optional[RandomSpec] = None
    tpe: Optional[TpeSpec] = None
    variants: Optional[Annotated[list[Variant], Field(min_length=1)]] = None
    seeds: Optional[Annotated[list[Seed], Field(min_length=1)]] = None
    scheduler: Optional[AshaSpec] = None

    def size(self) -> int:
        """How many points the sweep expands to (before duplicate random draws are dropped)."""
        n = math.prod(len(values) for values in (self.grid or {}).values())
        n *= self.random.samples if self.random else 1
        n *= self.tpe.samples if self.tpe else 1
        n *= len(self.variants) if self.variants else 1
        n *= len(self.seeds) if self.seeds else 1
        return n
