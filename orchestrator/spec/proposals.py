"""One sweep point checked against the spec, and the trials a search proposes at run time.

:class:`PointChecker` is the one check a point goes through: its swept values applied to the
spec's raw sections, the sections they land in validated, the cross-field rules run, and each
problem re-homed where the value came from. :mod:`~orchestrator.spec.validate` walks a sweep's
points through it once; :class:`Proposals` puts each point a search (``sweep.tpe``) proposes
while the job runs through the same check, so a proposal becomes a trial exactly as a grid
cell does (its id the hash of its resolved config).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from orchestrator.errors import Problem
from orchestrator.spec.expand import Point, Trial, seeded_trials
from orchestrator.spec.rules import check_config
from orchestrator.spec.sweep import TpeSpec
from rnn.config import set_path

__all__ = ["PointChecker", "Proposals"]


def attribute(problem: Problem, point: Point) -> Problem:
    """Re-home a trial's problem at the swept value that caused it (unchanged if none did)."""
    for path, origin in point.origins.items():
        if problem.path == path or problem.path.startswith((path + ".", path + "[")):
            return Problem(origin + problem.path[len(path):], problem.message, got=problem.got)
    swept = [point.origins[p] for p in problem.involves if p in point.origins]
    if not swept:
        return problem
    also = f" (together with {', '.join(swept[1:])})" if len(swept) > 1 else ""
    return Problem(swept[0], f"makes {problem.path} invalid: {problem.message}{also}", got=problem.got)


@dataclass(frozen=True)
class PointChecker:
    """Checks sweep points against one spec.

    Attributes:
        kind: the job's kind.
        base: the spec's sections as raw mappings (what a point's values are applied to).
        own: the spec's sections validated once (name -> engine config); a point validates only
            the sections its values land in and takes the rest from here.
        resources: the ``resources`` field values (some rules read them).
        declared: every path the spec sweeps, read from the raw sweep even where it is broken.
    """

    kind: str
    base: Mapping[str, Any]
    own: Mapping[str, Any]
    resources: Mapping[str, Any]
    declared: frozenset[str] = field(default_factory=frozenset)

    def check(self, point: Point) -> tuple[Optional[dict[str, Any]], list[Problem]]:
        """The point's validated sections (None if refused) and its problems, each named where
        the value that caused it was written."""
        touched = {path.split(".")[0] for path in point.overrides}
        config = {**self.base, **{name: copy.deepcopy(self.base[name]) for name in touched if name in self.base}}
        for path, value in point.overrides.items():
            set_path(config, path, copy.deepcopy(value))
        known = {name: section for name, section in self.own.items() if name not in touched}
        sections, found = check_config(config, self.kind, self.resources, known)
        problems = []
        for problem in found:
            attributed = attribute(problem, point)
            if attributed is problem and self.declared.intersection(problem.involves):
                continue  # a cross-field rule on a setting whose sweep is broken: judge it once that is fixed
            problems.append(attributed)
        return (sections if not problems else None), problems


@dataclass(frozen=True)
class Proposals:
    """What a search may propose, and how a proposal becomes trials.

    Attributes:
        tpe: the ``sweep.tpe`` section.
        metric: what the search minimises (``tpe.metric``, else the scheduler's, else ``val_loss``).
        seeds: the seeds each proposal runs with (``[None]``: its own ``train.seed``).
        checker: the spec's :class:`PointChecker`.
        base_trials: the spec's own config without any proposal's values, one per seed (what
            ``plan`` estimates from), or empty when the spec alone does not validate.
    """

    tpe: TpeSpec
    metric: str
    seeds: tuple[Optional[int], ...]
    checker: PointChecker
    base_trials: tuple[Trial, ...] = ()

    @property
    def total_trials(self) -> int:
        """The trials the search makes in all: one per proposal and seed."""
        return self.tpe.samples * len(self.seeds)

    def trials_for(self, values: Mapping[str, Any], number: int) -> tuple[list[Trial], list[Problem]]:
        """The trials of proposal ``number`` (0-based, counting accepted proposals), which sets
        ``values`` (dotted path -> value): one per seed; or none and the problems that refuse it."""
        origins = {path: f"sweep.tpe.space.{path} (proposal {number})" for path in values}
        point = Point(dict(values), origins)
        sections, problems = self.checker.check(point)
        if sections is None:
            return [], problems
        kind = self.checker.kind
        return seeded_trials(kind, point.overrides, sections, list(self.seeds), number * len(self.seeds)), []
