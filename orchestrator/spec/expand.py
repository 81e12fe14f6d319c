"""Sweep points, stable trial ids, and the :class:`Trial` a validated point becomes.

- ``grid``: a cartesian product, in the order written (the first path varies slowest);
- ``random``: ``samples`` draws from per-path distributions, deterministic given ``seed``
  (Python's ``random.Random``, whose draws are stable across Python versions), so a resumed
  job expands to the same trials. Adding a path to ``space`` changes every sample;
- ``variants``: a list of override mappings (``{model.cell: gru}``), outermost: every grid x
  random point once per variant, so unlike settings (an LN-LSTM and a GRU) share one job;
- ``seeds``: every point repeated once per seed (sets ``train.seed``), innermost.

A trial's id is a hash of its fully resolved config and the job kind, never of the spec's name,
resources or output, nor of where the trial sits in the sweep (nor of a later-added setting at its
default, see :data:`HASHED_UNLESS_DEFAULT`): widening a grid later keeps the
ids of the cells that were already there, so finished trials are recognised on resume.

This module builds nothing it has not been handed validated: :mod:`orchestrator.spec.validate`
walks the points once, validates each, and calls :func:`make_trial` with the section objects
(the engine's dataclasses, :mod:`rnn.config`). A trial carries those typed configs only; the
one plain-mapping form of them, for a trial id, a results row or a spec file, is
:func:`config_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from orchestrator.spec.sections import section_dict
from orchestrator.spec.sweep import (
    ChoiceDist,
    IntDist,
    LogUniformDist,
    RandomSpec,
    SweepSpec,
    UniformDist,
)
from rnn.config import (
    DEFAULT_MIN_LR_FRACTION,
    DEFAULT_VAL_MAX_CHARS,
    DataConfig,
    ModelConfig,
    RunConfig,
    ThroughputConfig,
    TrainConfig,
)


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


def sweep_points(sweep: Optional[SweepSpec]) -> list[Point]:
    """Every variant x grid x random point of ``sweep`` in order (variants slowest, then the
    first grid path), seeds left out.

    A seed cannot make a config invalid, so :mod:`~orchestrator.spec.validate` checks each of
    these points once and then makes one trial per seed (:func:`seed_points`).
    """
    if sweep is None:
        return [Point({}, {})]
    grid = sweep.grid or {}
    grid_points: list[Point] = [
        Point(
            {path: copy.deepcopy(value) for path, (_, value) in zip(grid, cell, strict=True)},
            {path: f"sweep.grid.{path}[{i}]" for path, (i, _) in zip(grid, cell, strict=True)},
        )
        for cell in itertools.product(*(list(enumerate(values)) for values in grid.values()))
    ]
    random_points = [Point({}, {})]
    if sweep.random is not None:
        random_points = [
            Point(sample, {path: f"sweep.random.space.{path} (sample {k})" for path in sample})
            for k, sample in enumerate(sample_space(sweep.random))
        ]
    variant_points = [Point({}, {})]
    if sweep.variants:
        variant_points = [
            Point(copy.deepcopy(dict(variant)), {path: f"sweep.variants[{i}].{path}" for path in variant})
            for i, variant in enumerate(sweep.variants)
        ]
    return [
        Point({**v.overrides, **g.overrides, **r.overrides}, {**v.origins, **g.origins, **r.origins})
        for v in variant_points
        for g in grid_points
        for r in random_points
    ]


def seed_points(sweep: Optional[SweepSpec]) -> list[Optional[int]]:
    """The seeds every point runs with; ``[None]`` keeps the point's own ``train.seed``."""
    return list(sweep.seeds) if sweep is not None and sweep.seeds else [None]


def canonical_json(obj: Any) -> str:
    """Sorted keys, no whitespace, floats by ``repr``: the same text for the same data."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


#: Settings added after trial ids were first written, left out of the id at their default value:
#: jobs written before keep their ids (and resume), while any other value is a different trial, so
#: a sweep over it has one trial per value.
HASHED_UNLESS_DEFAULT: tuple[tuple[str, str, Any], ...] = (
    ("train", "compile", "auto"),
    ("train", "schedule_by", "steps"),
    ("data", "val_max_chars", DEFAULT_VAL_MAX_CHARS),
    ("model", "weight_drop", 0.0),
    ("model", "dropout_mode", "standard"),
    ("model", "embedding_dropout", 0.0),
    ("model", "min_mlp", False),
    ("data", "val_mode", "windows"),
    ("train", "stateful", False),
    ("train", "min_lr_fraction", DEFAULT_MIN_LR_FRACTION),
)


def trial_id_for(kind: str, config: Mapping[str, Any]) -> str:
    """12 hex chars of the sha256 of the kind and the fully resolved config (see :data:`HASHED_UNLESS_DEFAULT`)."""
    hashed = dict(config)
    for section, key, default in HASHED_UNLESS_DEFAULT:
        part = hashed.get(section)
        if isinstance(part, Mapping) and key in part and part[key] == default:
            hashed[section] = {k: v for k, v in part.items() if k != key}
    text = canonical_json({"kind": kind, "config": hashed})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Trial:
    """One run of a job, built once from validated sections; treat every field as read-only.

    Attributes:
        trial_id: stable id, :func:`trial_id_for` of its :func:`config_dict`.
        index: position in the job's trial list.
        overrides: the swept values, dotted path -> value, always including ``"train.seed"``.
        run_config: the engine's typed config (data, model, train).
        throughput_config: the engine's throughput config, or None for a train job.
    """

    trial_id: str
    index: int
    overrides: dict[str, Any] = field(hash=False, compare=False)
    run_config: RunConfig = field(hash=False, compare=False)
    throughput_config: Optional[ThroughputConfig] = field(hash=False, compare=False)

    @property
    def kind(self) -> str:
        return "throughput" if self.throughput_config is not None else "train"


def config_dict(run: RunConfig, throughput: Optional[ThroughputConfig] = None) -> dict[str, Any]:
    """A trial's config as plain JSON types: ``{"data", "model", "train"}``, plus ``"throughput"``
    for a throughput trial. The one plain form of a config: what a trial id hashes, what fills the
    results' config columns and what a ``best.yaml`` is written from."""
    out = {"data": section_dict(run.data), "model": section_dict(run.model), "train": section_dict(run.train)}
    if throughput is not None:
        out["throughput"] = section_dict(throughput)
    return out


def trial_config(trial: Trial) -> dict[str, Any]:
    """:func:`config_dict` of a trial's configs."""
    return config_dict(trial.run_config, trial.throughput_config)


def _validated(config: Mapping[str, Any], path: str, raw: Any) -> Any:
    """A swept value as validation left it (YAML's bare ``off`` is ``False`` until ``train.compile``
    reads it as ``"off"``), so the progress log shows what runs; ``raw`` where the path is not a setting."""
    node: Any = config
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return raw
        node = node[key]
    return node


def seeded_trials(
    kind: str, overrides: Mapping[str, Any], sections: Mapping[str, Any], seeds: list[Optional[int]], first_index: int
) -> list[Trial]:
    """One validated point's trials, one per seed (``None``: the point's own ``train.seed``),
    indexed from ``first_index``. A seed cannot make a config invalid."""
    trials: list[Trial] = []
    for seed in seeds:
        these, swept = sections, dict(overrides)
        if seed is not None:
            swept["train.seed"] = seed
            these = {**sections, "train": dataclasses.replace(sections["train"], seed=seed)}
        trials.append(make_trial(kind, these, swept, index=first_index + len(trials)))
    return trials


def make_trial(kind: str, sections: Mapping[str, Any], overrides: Mapping[str, Any], index: int) -> Trial:
    """The trial of validated ``sections`` (name -> engine config; ``throughput`` for throughput jobs)."""
    data, model, train = sections["data"], sections["model"], sections["train"]
    assert isinstance(data, DataConfig) and isinstance(model, ModelConfig) and isinstance(train, TrainConfig)
    run = RunConfig(data=data, model=model, train=train)
    throughput: Optional[ThroughputConfig] = None
    if kind == "throughput":
        throughput = sections["throughput"]
        assert isinstance(throughput, ThroughputConfig)
    config = config_dict(run, throughput)
    return Trial(
        trial_id=trial_id_for(kind, config),
        index=index,
        overrides={**{path: _validated(config, path, value) for path, value in overrides.items()},
                   "train.seed": train.seed},
        run_config=run,
        throughput_config=throughput,
    )
