"""``load_job``: a spec file to a validated :class:`Job` and its trials, in one pass.

YAML (:mod:`~orchestrator.spec.yamlio`) → the whole-job fields and the spec's own sections
(:mod:`~orchestrator.spec.schema`) → the sweep's structure (paths that exist, no repeats, at
most :data:`~orchestrator.spec.sweep.MAX_TRIALS`) → each random distribution's bounds → every
variant x grid x random point once: its swept values applied to the spec's sections, the sections they
land in validated once (:func:`~orchestrator.spec.rules.check_config`; the others are the
spec's, already validated), the cross-field rules run → one :class:`Trial` per point and seed,
built from those validated sections (:func:`~orchestrator.spec.expand.make_trial`).

Every problem is collected before anything is raised. A problem caused by a swept value is
reported where that value was written, e.g.
``sweep.grid.model.cell[2]: should be 'lstm', 'gru', 'rnn', 'mingru' or 'minlstm' (got 'transformer')``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import ValidationError

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.expand import Point, Trial, seed_points, seeded_trials, sweep_points
from orchestrator.spec.problems import problems_from_pydantic
from orchestrator.spec.proposals import PointChecker, Proposals
from orchestrator.spec.rules import BUILTIN_CORPORA, check_config, field_values, sweepable_paths
from orchestrator.spec.schema import KINDS, SECTIONS, JobSpec, ResourcesSpec, config_sections
from orchestrator.spec.sections import field_names
from orchestrator.spec.sweep import MAX_TRIALS, ChoiceDist, IntDist, SweepSpec
from orchestrator.spec.yamlio import decode_spec, parse_yaml, read_spec_bytes
from rnn.config import DataConfig, TrainConfig, set_path
from rnn.corpus import corpus_file_problem

log = logging.getLogger(__name__)

_WHOLE_JOB = ("name", "kind", "output", "resources", "sweep", "tracking")


@dataclass(frozen=True)
class Job:
    """A validated job spec and its trials, in sweep order.

    Attributes:
        spec: the validated spec (name, kind, sections, sweep, resources, output).
        trials: one per distinct variant x grid x random point and seed; ``trials[i].index == i``.
        source: where the spec came from (its path, as given), for messages and the manifest.
        text: the spec's text exactly as validated, for the manifest (a YAML dump of the mapping
            when the job was built from one).
        search: for a ``sweep.tpe`` job, what its search may propose (its ``trials`` are then
            empty: they are proposed as the job runs); None for any other job.
    """

    spec: JobSpec
    trials: tuple[Trial, ...]
    source: str
    text: str
    search: Optional[Proposals] = None


def load_job(path: Union[str, os.PathLike[str]]) -> Job:
    """Read, parse and validate a job spec file, and expand its sweep into trials.

    Raises:
        SpecError: every problem found (unreadable file, YAML, schema, cross-field, sweep).
    """
    source = str(path)
    text = decode_spec(read_spec_bytes(path), source)
    return build_job(parse_yaml(text, source), source=source, text=text)


def _path_problem(path: str, kind: str, where: str) -> Optional[Problem]:
    if path in sweepable_paths(kind):
        return None
    root = path.split(".")[0]
    if root in _WHOLE_JOB:
        return Problem(where, "cannot be swept: name, kind, output, resources, sweep and tracking apply to the "
                              "whole job")
    if root == "throughput" and path in sweepable_paths("throughput"):
        return Problem(where, "throughput settings can only be swept in a kind: throughput job")
    if path in SECTIONS:
        example = f"{path}.{field_names(SECTIONS[path])[0]}"
        return Problem(where, f"names a whole section; sweep one setting in it, e.g. {example}")
    close = difflib.get_close_matches(path, sweepable_paths("throughput"), n=2, cutoff=0.75)
    if close:
        return Problem(where, "no such setting; did you mean " + " or ".join(close) + "?")
    return Problem(where, "no such setting (paths look like model.cell, train.lr, data.seq_len)")


def _repeats(values: list[Any], where: str) -> list[Problem]:
    """Repeated values would expand to the same trial twice."""
    seen: dict[str, int] = {}
    out = []
    for j, value in enumerate(values):
        key = json.dumps(value, sort_keys=True, default=repr)  # any YAML value, even a date
        if key in seen:
            message = f"repeats {where}[{seen[key]}]; each value must be distinct"
            out.append(Problem(f"{where}[{j}]", message, got=value))
        seen.setdefault(key, j)
    return out


def _valid_dist(path: Any, dist: Any) -> bool:
    try:
        SweepSpec.model_validate({"random": {"samples": 1, "space": {path: dist}}})
        return True
    except ValidationError:
        return False


def _usable_sweep(raw: Any, kind: str) -> tuple[Optional[SweepSpec], list[Problem]]:
    """The part of the sweep section that can be expanded, and its structural problems.

    Parts pydantic refused (already reported) are left out, so the rest is still checked.
    """
    if not isinstance(raw, dict):
        return None, []
    parts: dict[str, Any] = {}
    for key in ("grid", "random", "tpe", "variants", "seeds", "scheduler"):
        value = raw.get(key)
        if key in ("random", "tpe") and isinstance(value, dict) and isinstance(value.get("space"), dict):
            value = {**value, "space": {p: d for p, d in value["space"].items() if _valid_dist(p, d)}}
        if value is not None:
            try:
                parts[key] = getattr(SweepSpec.model_validate({key: value}), key)
            except ValidationError:  # already reported; a search's space is still checked on its own
                if key in ("random", "tpe") and isinstance(value, dict) and value.get("space"):
                    try:
                        parts[key] = getattr(SweepSpec.model_validate({key: {"samples": 1, "space": value["space"]}}),
                                             key)
                    except ValidationError:
                        pass
    problems: list[Problem] = []
    grid = dict(parts.get("grid") or {})
    for path in list(grid):
        problem = _path_problem(path, kind, f"sweep.grid.{path}")
        if problem:
            problems.append(problem)
            del grid[path]
        else:
            problems += _repeats(grid[path], f"sweep.grid.{path}")
    random_spec, space = _usable_space(parts.get("random"), "sweep.random", kind, grid, problems)
    tpe_spec, tpe_space = _usable_space(parts.get("tpe"), "sweep.tpe", kind, grid, problems)
    problems += _tpe_problems(raw, tpe_spec, parts.get("scheduler"))
    if "tpe" in raw and kind != "train":
        problems.append(Problem("sweep.tpe", "needs kind: train (a throughput trial has no validation loss to "
                                "minimise); sweep a throughput job with grid or random"))
    variants, variant_problems = _usable_variants(parts.get("variants"), kind, grid, {**space, **tpe_space})
    problems += variant_problems
    seeds = parts.get("seeds")
    if seeds:
        problems += _repeats(list(seeds), "sweep.seeds")
        in_variants = any("train.seed" in v for v in variants or [])
        if "train.seed" in grid or "train.seed" in space or "train.seed" in tpe_space or in_variants:
            message = "train.seed is also swept by grid, random or variants; use one of them"
            problems.append(Problem("sweep.seeds", message))
    sweep = SweepSpec(
        grid=grid or None,
        random=random_spec.model_copy(update={"space": space}) if space and random_spec is not None else None,
        tpe=tpe_spec.model_copy(update={"space": tpe_space}) if tpe_space and tpe_spec is not None else None,
        variants=variants,
        seeds=seeds,
        scheduler=parts.get("scheduler"),
    )
    if sweep.size() > MAX_TRIALS:
        message = f"expands to {sweep.size()} trials, more than the limit of {MAX_TRIALS}; use fewer values or seeds"
        problems.append(Problem("sweep", message))
    return sweep, problems


def _usable_space(
    search: Any, where: str, kind: str, grid: Mapping[str, Any], problems: list[Problem]
) -> tuple[Any, dict[str, Any]]:
    """A ``random`` or ``tpe`` section and its space without the paths that cannot be swept there
    (their problems are added to ``problems``)."""
    space = dict(search.space) if search is not None else {}
    for path in list(space):
        at = f"{where}.space.{path}"
        problem = _path_problem(path, kind, at) or (
            Problem(at, "also swept by sweep.grid; sweep each setting in one place") if path in grid else None)
        if problem:
            problems.append(problem)
            del space[path]
    return search, space


def _tpe_problems(raw: Mapping[str, Any], tpe: Any, scheduler: Any) -> list[Problem]:
    """``tpe`` searches one space on its own: not beside ``grid`` or ``random``, nor multiplied by
    ``variants``; its metric agrees with the scheduler's."""
    if "tpe" not in raw:
        return []
    out = []
    beside = [key for key in ("grid", "random") if raw.get(key) is not None]
    if beside:
        out.append(Problem("sweep.tpe", f"cannot be combined with sweep.{' or sweep.'.join(beside)}: the search "
                           "chooses every swept value; put those settings in tpe.space (a fixed list as "
                           "{dist: choice, values: [...]})"))
    if raw.get("variants") is not None:
        out.append(Problem("sweep.variants", "cannot be combined with sweep.tpe: one study searches one space; "
                           "sweep a choice in tpe.space instead (e.g. model.cell: {dist: choice, values: [lstm, "
                           "gru]}), or run one job per variant"))
    if tpe is not None and scheduler is not None and tpe.metric is not None and tpe.metric != scheduler.metric:
        out.append(Problem("sweep.tpe.metric", f"should be the scheduler's metric ({scheduler.metric}): successive "
                           "halving and the search must rank trials alike; or leave it out", got=tpe.metric))
    return out


def _usable_variants(
    variants: Optional[list[dict[str, Any]]], kind: str, grid: Mapping[str, Any], space: Mapping[str, Any]
) -> tuple[Optional[list[dict[str, Any]]], list[Problem]]:
    """The variants with their unusable paths left out, and the problems with those paths.

    A variant sets several paths together, so a path may appear in many variants; it may not
    also be swept by ``grid`` or ``random`` (the two would fight over its value).
    """
    if not variants:
        return None, []
    problems: list[Problem] = []
    kept: list[dict[str, Any]] = []
    for i, variant in enumerate(variants):
        good = {}
        for path, value in variant.items():
            where = f"sweep.variants[{i}].{path}"
            problem = _path_problem(path, kind, where)
            if problem is None and (path in grid or path in space):
                other = "sweep.grid" if path in grid else "sweep.random"
                problem = Problem(where, f"also swept by {other}; sweep each setting in one place")
            if problem:
                problems.append(problem)
            else:
                good[path] = value
        kept.append(good)
    problems += _repeats(list(variants), "sweep.variants")
    return kept, problems


def _check_scheduler(sweep: Optional[SweepSpec], raw: Mapping[str, Any], kind: str) -> tuple[
        Optional[SweepSpec], list[Problem]]:
    """Successive halving's rules: train jobs only, a fixed ``train.max_steps`` it agrees with,
    and a first rung below it. Returns the sweep with ``scheduler.max_steps`` filled in."""
    if sweep is None or sweep.scheduler is None:
        return sweep, []
    asha = sweep.scheduler
    where = "sweep.scheduler"
    if kind != "train":
        return sweep, [Problem(f"{where}.type", "successive halving needs kind: train (a throughput trial has no "
                               "validation loss to rank)")]
    swept = {*(sweep.grid or {}), *(sweep.random.space if sweep.random else {}),
             *(sweep.tpe.space if sweep.tpe else {}), *(p for v in sweep.variants or [] for p in v)}
    if "train.max_steps" in swept:
        return sweep, [Problem(where, "train.max_steps cannot be swept under successive halving: every trial "
                               "shares its budget (sweep.scheduler.max_steps)")]
    train = raw.get("train")
    budget = (train if isinstance(train, dict) else {}).get("max_steps", TrainConfig.max_steps)
    if not isinstance(budget, int) or isinstance(budget, bool):
        return sweep, [Problem("train.max_steps", "successive halving needs a step budget (an integer)",
                               got=budget)]
    if asha.max_steps is not None and asha.max_steps != budget:
        return sweep, [Problem(f"{where}.max_steps", f"should equal train.max_steps ({budget}), the budget a "
                               "trial that is never pruned trains for; or leave it out", got=asha.max_steps)]
    if asha.grace_steps >= budget:
        return sweep, [Problem(f"{where}.grace_steps", f"should be below max_steps ({budget}): it is the first "
                               "rung", got=asha.grace_steps)]
    return sweep.model_copy(update={"scheduler": asha.model_copy(update={"max_steps": budget})}), []


def _check_space_values(sweep: SweepSpec, base: dict, kind: str, res: dict) -> tuple[SweepSpec, list[Problem]]:
    """Each ``random`` and ``tpe`` distribution's bounds (or choices) must be valid values at its path.

    Returns the sweep without the failing paths (so trials do not repeat the same problem per
    sample) and the problems.
    """
    out: list[Problem] = []
    for key in ("random", "tpe"):
        search = getattr(sweep, key)
        if search is None:
            continue
        bad: set[str] = set()
        for path, dist in search.space.items():
            if isinstance(dist, ChoiceDist):
                probes = [(f"values[{i}]", v) for i, v in enumerate(dist.values)]
            elif isinstance(dist, IntDist):
                probes = [("low", dist.low), ("high", dist.high)]
            else:  # uniform and loguniform draw floats, whatever the bounds were written as
                probes = [("low", float(dist.low)), ("high", float(dist.high))]
            for label, value in probes:
                config = copy.deepcopy(base)
                set_path(config, path, value)
                for p in check_config(config, kind, res)[1]:
                    if p.path == path or p.path.startswith(path + ".") or p.path.startswith(path + "["):
                        hint = "; uniform and loguniform draw floats, use dist: int" if "integer" in p.message else ""
                        where = f"sweep.{key}.space.{path}.{label}{p.path[len(path):]}"
                        out.append(Problem(where, p.message + hint, got=p.got))
                        bad.add(path)
        space = {path: dist for path, dist in search.space.items() if path not in bad}
        sweep = sweep.model_copy(update={key: search.model_copy(update={"space": space}) if space else None})
    return sweep, out


def _declared_paths(raw_sweep: Any) -> set[str]:
    """Paths the user meant to sweep, read from the raw section even where it is broken."""
    if not isinstance(raw_sweep, dict):
        return set()
    parts = [raw_sweep.get("grid")]
    for search in ("random", "tpe"):
        part = raw_sweep.get(search)
        parts.append(part.get("space") if isinstance(part, dict) else None)
    variants = raw_sweep.get("variants")
    if isinstance(variants, list):
        parts += variants
    return {str(path) for part in parts if isinstance(part, dict) for path in part}


def _points(sweep: Optional[SweepSpec]) -> list[Point]:
    """The points to check: every variant x grid x random point, or (a sweep too large to enumerate,
    already reported) each grid value on its own."""
    if sweep is None or sweep.size() <= MAX_TRIALS:
        return sweep_points(sweep)
    grid = sweep.grid or {}
    points = [Point({p: v}, {p: f"sweep.grid.{p}[{i}]"}) for p, vs in grid.items() for i, v in enumerate(vs)]
    return points + [Point(dict(v), {p: f"sweep.variants[{i}].{p}" for p in v})
                     for i, v in enumerate(sweep.variants or [])]


def _own_sections(raw: Mapping[str, Any], kind: str) -> tuple[dict[str, Any], list[Problem]]:
    """The spec's own sections, each validated once into its engine config; those refused are
    left out (their problems are returned). A point validates only the sections its swept values
    land in, and takes the rest from here."""
    own: dict[str, Any] = {}
    problems: list[Problem] = []
    for name in config_sections(kind):
        section, _, found = field_values(SECTIONS[name], raw.get(name, {}), name)
        problems += found
        if section is not None:
            own[name] = section
    return own, problems


def _position(path: str, order: list[str]) -> int:
    root = path.split(".")[0].split("[")[0]
    return order.index(root) if root in order else len(order)


def build_job(raw: Mapping[str, Any], source: str = "<spec>", text: Optional[str] = None) -> Job:
    """Validate a parsed spec mapping and expand it into trials (see the module docstring).

    Raises:
        SpecError: every problem, one per line, ``source`` naming the file.
    """
    # `model:` with every key commented out parses as null: read it as "all defaults".
    raw = {k: v for k, v in raw.items() if not (v is None and k in (*SECTIONS, "sweep", "resources", "tracking"))}
    problems: list[Problem] = []
    spec: Optional[JobSpec] = None
    try:  # the whole-job fields; the sections are validated on their own, into the engine's configs
        spec = JobSpec.model_validate({k: v for k, v in raw.items() if k not in SECTIONS})
    except ValidationError as e:
        problems += problems_from_pydantic(e, JobSpec)
    kind = raw.get("kind", "train")
    if kind not in KINDS:  # already reported; check the rest as the sections suggest
        kind = "throughput" if "throughput" in raw else "train"
    own, own_problems = _own_sections(raw, kind)
    order = list(JobSpec.model_fields)  # in the spec's order, as one pydantic pass would list them
    problems = sorted(problems + own_problems, key=lambda p: _position(p.path, order))
    if kind == "train" and "throughput" in raw:
        problems.append(Problem("throughput", "only allowed with kind: throughput; remove it or set kind: throughput"))
    _, res, _ = field_values(ResourcesSpec, raw.get("resources", {}), "resources")
    sweep, sweep_problems = _usable_sweep(raw.get("sweep"), kind)
    problems += sweep_problems
    sweep, scheduler_problems = _check_scheduler(sweep, raw, kind)
    problems += scheduler_problems
    base = {name: raw.get(name, {}) for name in config_sections(kind)}
    if sweep is not None:
        sweep, random_problems = _check_space_values(sweep, base, kind, res)
        problems += random_problems
    checker = PointChecker(kind, base, own, res, frozenset(_declared_paths(raw.get("sweep"))))
    checked: list[tuple[Point, dict[str, Any]]] = []
    for point in _points(sweep):
        sections, point_problems = checker.check(point)
        problems += point_problems
        if sections is not None:
            checked.append((point, sections))
    problems += _corpus_problems([sections["data"] for _, sections in checked])
    if problems:
        raise SpecError(problems, file=source)
    assert spec is not None  # pydantic raised nothing, or there would be problems
    spec = spec.model_copy(update=own)  # the sections, validated (a throughput job's filled with defaults)
    if spec.sweep is not None and sweep is not None and sweep.scheduler is not None:
        # the scheduler with its max_steps filled in from train.max_steps
        spec = spec.model_copy(update={"sweep": spec.sweep.model_copy(update={"scheduler": sweep.scheduler})})
    if text is None:
        text = yaml.safe_dump(dict(raw), sort_keys=False, allow_unicode=True)
    if spec.kind == "train":
        _note_late_evaluation(spec.name, [sections["train"] for _, sections in checked])
    if "data.level" not in _declared_paths(raw.get("sweep")):
        _note_char_vocabulary(spec.name, [sections["data"] for _, sections in checked])
    if spec.sweep is not None and spec.sweep.tpe is not None:
        return Job(spec, (), source, text, search=_proposals(spec, checker, checked))
    return Job(spec, _trials(spec, checked), source, text)


def _note_char_vocabulary(name: str, data: list[DataConfig]) -> None:
    """Warn (once) where ``vocab_size`` is set at level char, which ignores it; a sweep over the
    level sets it for its bpe or word points, so this is said only where the level is not swept."""
    ignored = sorted({d.vocab_size for d in data if d.level == "char" and d.vocab_size is not None})
    if ignored:
        log.warning("%s: data.vocab_size (%s) is ignored at level char (its vocabulary is the training split's "
                    "characters)", name, ", ".join(map(str, ignored)))


def _note_late_evaluation(name: str, trains: list[TrainConfig]) -> None:
    """Warn (once per pair) where ``eval_every`` exceeds ``max_steps``: valid, since a trial is always
    evaluated at its end, but then only there, which the default eval_every makes easy to miss."""
    seen: set[tuple[int, int]] = set()
    for t in trains:
        if t.max_steps is not None and t.eval_every > t.max_steps and (t.eval_every, t.max_steps) not in seen:
            seen.add((t.eval_every, t.max_steps))
            log.warning("%s: train.eval_every (%d) is more than max_steps (%d): each trial is evaluated once, at its "
                        "end (no checkpoint, early stopping or rung before it); set eval_every <= max_steps to "
                        "evaluate along the way", name, t.eval_every, t.max_steps)


def _corpus_problems(data: list[DataConfig]) -> list[Problem]:
    """Each corpus file's content, once: empty, binary, not UTF-8 (judged from its first
    megabyte: a run reads it all), or too short for one validation window at char level (its
    size in bytes bounds its characters from above, so this never refuses a usable file)."""
    out: list[Problem] = []
    content: dict[str, tuple[Optional[str], int]] = {}  # each file read once: its problem, its size
    for cfg in data:
        if cfg.corpus in BUILTIN_CORPORA:
            continue
        path = Path(cfg.corpus).expanduser()
        if cfg.corpus not in content:
            found = corpus_file_problem(path)
            content[cfg.corpus] = (found, path.stat().st_size if found is None else 0)
        problem, size = content[cfg.corpus]
        if problem is None and cfg.level == "char" and cfg.val_fraction > 0:
            chars = int(size * cfg.val_fraction)
            if cfg.val_max_chars is not None:
                chars = min(chars, cfg.val_max_chars)
            if chars < cfg.seq_len + 1:  # checked per config: seq_len and the split may be swept
                problem = (f"too short: its validation split (val_fraction {cfg.val_fraction}) has at most "
                           f"{chars} characters, one window needs seq_len + 1 = {cfg.seq_len + 1}")
        if problem is not None:  # one line per distinct problem: SpecError drops repeats
            out.append(Problem("data.corpus", f"{path}: {problem.replace('FILE', str(path))}", got=cfg.corpus))
    return out


def _proposals(spec: JobSpec, checker: PointChecker, checked: list[tuple[Point, dict[str, Any]]]) -> Proposals:
    """A TPE job's search: its trials are proposed while it runs (:mod:`orchestrator.run.tpe`)."""
    sweep = spec.sweep
    assert sweep is not None and sweep.tpe is not None
    metric = sweep.tpe.metric or (sweep.scheduler.metric if sweep.scheduler is not None else "val_loss")
    seeds = seed_points(sweep)
    base = [seeded_trials(spec.kind, {}, sections, seeds, 0) for point, sections in checked if not point.overrides]
    return Proposals(sweep.tpe, metric, tuple(seeds), checker, tuple(base[0]) if base else ())


def _trials(spec: JobSpec, checked: list[tuple[Point, dict[str, Any]]]) -> tuple[Trial, ...]:
    """One trial per checked point and seed; a point that resolves to a config already in the
    list (possible with ``choice`` or ``int`` draws) is dropped with a warning."""
    trials: list[Trial] = []
    seen: set[str] = set()
    seeds = seed_points(spec.sweep)
    for point, sections in checked:
        for trial in seeded_trials(spec.kind, point.overrides, sections, seeds, len(trials)):
            if trial.trial_id in seen:
                log.warning("%s: dropping a repeated sweep point %s (trial %s)", spec.name, trial.overrides,
                            trial.trial_id)
                continue
            seen.add(trial.trial_id)
            trials.append(dataclasses.replace(trial, index=len(trials)))
    return tuple(trials)
