"""Whole-spec validation: field checks, cross-field rules and the sweep, every problem at once.

pydantic checks each field; the rules here need several fields at once (``layer_norm`` only
with ``lstm``, ``tie_weights`` needs equal sizes, a training budget, a corpus file that exists,
a model under :data:`~orchestrator.spec.schema.MAX_PARAMETERS`), or the sweep (paths that exist,
swept values valid where they land). They run on the raw mapping, skipping any field pydantic
already refused, so one pass reports everything.

Sweeps are checked trial by trial (grid x random samples; seeds cannot make a config invalid):
a problem caused by a swept value is reported where that value was written, e.g.
``sweep.grid.model.cell[2]: should be 'lstm', 'gru' or 'rnn' (got 'transformer')``.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from pydantic import ValidationError

from orchestrator.errors import Problem, SpecError, problems_from_pydantic
from orchestrator.spec.schema import (
    KINDS,
    MAX_PARAMETERS,
    SECTIONS,
    EarlyStoppingSpec,
    JobSpec,
    ResourcesSpec,
    ThroughputSpec,
    config_sections,
    set_path,
)
from orchestrator.spec.sweep import MAX_TRIALS, ChoiceDist, IntDist, Point, SweepSpec, sweep_points
from rnn.config import DEFAULT_VOCAB_SIZE

#: Vocabulary assumed for char-level size estimates (the real one is the training split's characters).
CHAR_VOCAB_ESTIMATE = 256
BUILTIN_CORPORA = ("builtin", "shakespeare")
_GATES = {"lstm": 4, "gru": 3, "rnn": 1}
_WHOLE_JOB = ("name", "kind", "output", "resources", "sweep")
_BAD: Any = object()  # a field value pydantic refused: cross-field checks skip it


def estimate_vocab_size(level: str, vocab_size: Optional[int]) -> int:
    """The vocabulary size used for estimates: the cap for bpe/word, a generous guess for char."""
    if level == "char":
        return CHAR_VOCAB_ESTIMATE
    return vocab_size or DEFAULT_VOCAB_SIZE[level]


def estimate_parameters(model: Mapping[str, Any], vocab_size: int) -> int:
    """Parameters of a model config, by arithmetic (no torch): embedding, recurrent stacks, heads.

    PyTorch-style cells with two bias vectors; layer norm adds gains and biases; a bidirectional
    model has two stacks and two heads. Close enough to refuse absurd sizes and to estimate cost.
    """
    gates = _GATES[model["cell"]]
    emb, hidden, layers = model["embedding_dim"], model["hidden_size"], model["num_layers"]
    # per layer: weight_ih [gates*H, in], weight_hh [gates*H, H], bias_ih and bias_hh [gates*H]
    stack = sum(gates * hidden * ((emb if i == 0 else hidden) + hidden + 2) for i in range(layers))
    if model.get("layer_norm"):
        stack += layers * (2 * gates * hidden + 2 * hidden)
    directions = 2 if model.get("bidirectional") else 1
    head = (0 if model.get("tie_weights") else hidden * vocab_size) + vocab_size
    return vocab_size * emb + directions * (stack + head)


def _field_values(cls: type, raw: Any, prefix: str) -> tuple[dict[str, Any], list[Problem]]:
    """A section's field values (defaults filled, refused ones as _BAD) and its field problems."""
    try:
        return cls.model_validate(raw).model_dump(), []
    except ValidationError as e:
        problems = problems_from_pydantic(e, cls, (prefix,))
        locs = [err["loc"] for err in e.errors()]
    whole = not isinstance(raw, dict) or any(len(loc) == 0 for loc in locs)
    bad = {loc[0] for loc in locs if loc}
    values = {
        name: _BAD if whole or name in bad else raw.get(name, f.get_default(call_default_factory=True))
        for name, f in cls.model_fields.items()
    }
    return values, problems


def _ok(*values: Any) -> bool:
    return all(v is not _BAD for v in values)


def _cross_problems(v: dict[str, dict[str, Any]], kind: str, res: dict[str, Any]) -> list[Problem]:
    """Rules that read several fields; each problem lists the fields it read in ``involves``."""
    data, model, train = v["data"], v["model"], v["train"]
    out: list[Problem] = []
    if _ok(model["layer_norm"], model["cell"]) and model["layer_norm"] and model["cell"] != "lstm":
        out.append(Problem(
            "model.layer_norm", f"the layer-norm cell exists for lstm only (got cell {model['cell']!r}); "
            "set layer_norm: false or cell: lstm", involves=("model.layer_norm", "model.cell")))
    tie = (model["tie_weights"], model["embedding_dim"], model["hidden_size"])
    if _ok(*tie) and tie[0] and tie[1] != tie[2]:
        out.append(Problem(
            "model.tie_weights", f"needs embedding_dim == hidden_size (got embedding_dim {tie[1]}, hidden_size "
            f"{tie[2]})", involves=("model.tie_weights", "model.embedding_dim", "model.hidden_size")))
    budget = ("max_steps", "max_epochs", "max_time_s")
    if kind == "train" and _ok(*(train[b] for b in budget)) and all(train[b] is None for b in budget):
        out.append(Problem("train", "no budget: set at least one of max_steps, max_epochs, max_time_s",
                           involves=tuple(f"train.{b}" for b in budget)))
    corpus = data["corpus"]
    if _ok(corpus) and corpus not in BUILTIN_CORPORA:
        path = Path(corpus)
        if not path.is_file():
            what = "is a directory, not a text file" if path.is_dir() else "no such file"
            out.append(Problem(
                "data.corpus", f"{what} ({path.absolute()}; relative paths are resolved against the current "
                f"directory); use builtin, shakespeare or a UTF-8 text file", got=corpus, involves=("data.corpus",)))
    if _ok(*model.values(), data["level"], data["vocab_size"]):
        params = estimate_parameters(model, estimate_vocab_size(data["level"], data["vocab_size"]))
        if params > MAX_PARAMETERS:
            out.append(Problem(
                "model", f"about {params:.3g} parameters, more than the limit of {MAX_PARAMETERS:.0e}; reduce "
                "hidden_size, num_layers or embedding_dim", involves=tuple(f"model.{k}" for k in model)
                + ("data.level", "data.vocab_size")))
    if _ok(train["device"], res["gpus_per_trial"]) and train["device"] == "cuda" and not res["gpus_per_trial"]:
        out.append(Problem(
            "train.device", "cuda needs resources.gpus_per_trial > 0 (a trial that reserves no GPU sees none); "
            "use device: auto or reserve a GPU", involves=("train.device",)))
    tp = v.get("throughput")
    if tp and _ok(tp["auto_start"], tp["auto_max_batch_size"]) and tp["auto_start"] > tp["auto_max_batch_size"]:
        out.append(Problem(
            "throughput.auto_start", f"should not exceed auto_max_batch_size ({tp['auto_max_batch_size']})",
            got=tp["auto_start"], involves=("throughput.auto_start", "throughput.auto_max_batch_size")))
    return out


def check_run_config(config: Mapping[str, Any], kind: str, resources: Mapping[str, Any]) -> list[Problem]:
    """Field and cross-field problems of one trial config (sections as raw mappings)."""
    values, problems = {}, []
    for name in config_sections(kind):
        values[name], section_problems = _field_values(SECTIONS[name], config.get(name, {}), name)
        problems += section_problems
    return problems + _cross_problems(values, kind, dict(resources))


def sweepable_paths(kind: str) -> list[str]:
    """Every dotted path a sweep may set for a job of this kind."""
    paths = [f"{name}.{f}" for name in config_sections(kind) for f in SECTIONS[name].model_fields]
    return paths + [f"train.early_stopping.{f}" for f in EarlyStoppingSpec.model_fields]


def _path_problem(path: str, kind: str, where: str) -> Optional[Problem]:
    if path in sweepable_paths(kind):
        return None
    root = path.split(".")[0]
    if root in _WHOLE_JOB:
        return Problem(where, "cannot be swept: name, kind, output, resources and sweep apply to the whole job")
    if root == "throughput" and path in sweepable_paths("throughput"):
        return Problem(where, "throughput settings can only be swept in a kind: throughput job")
    if path in SECTIONS:
        example = f"{path}.{next(iter(SECTIONS[path].model_fields))}"
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
    for key in ("grid", "random", "seeds"):
        value = raw.get(key)
        if key == "random" and isinstance(value, dict) and isinstance(value.get("space"), dict):
            value = {**value, "space": {p: d for p, d in value["space"].items() if _valid_dist(p, d)}}
        if value is not None:
            try:
                parts[key] = getattr(SweepSpec.model_validate({key: value}), key)
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
    random_spec = parts.get("random")
    space = dict(random_spec.space) if random_spec else {}
    for path in list(space):
        where = f"sweep.random.space.{path}"
        problem = _path_problem(path, kind, where) or (
            Problem(where, "also swept by sweep.grid; sweep each setting in one place") if path in grid else None)
        if problem:
            problems.append(problem)
            del space[path]
    seeds = parts.get("seeds")
    if seeds:
        problems += _repeats(list(seeds), "sweep.seeds")
        if "train.seed" in grid or "train.seed" in space:
            problems.append(Problem("sweep.seeds", "train.seed is also swept by grid or random; use one of them"))
    sweep = SweepSpec(
        grid=grid or None,
        random=random_spec.model_copy(update={"space": space}) if space else None,
        seeds=seeds,
    )
    if sweep.size() > MAX_TRIALS:
        message = f"expands to {sweep.size()} trials, more than the limit of {MAX_TRIALS}; use fewer values or seeds"
        problems.append(Problem("sweep", message))
    return sweep, problems


def _check_random_values(sweep: SweepSpec, base: dict, kind: str, res: dict) -> tuple[SweepSpec, list[Problem]]:
    """Each random distribution's bounds (or choices) must be valid values at its path.

    Returns the sweep without the failing paths (so trials do not repeat the same problem per
    sample) and the problems.
    """
    if sweep.random is None:
        return sweep, []
    out: list[Problem] = []
    bad: set[str] = set()
    for path, dist in sweep.random.space.items():
        if isinstance(dist, ChoiceDist):
            probes = [(f"values[{i}]", v) for i, v in enumerate(dist.values)]
        elif isinstance(dist, IntDist):
            probes = [("low", dist.low), ("high", dist.high)]
        else:  # uniform and loguniform draw floats, whatever the bounds were written as
            probes = [("low", float(dist.low)), ("high", float(dist.high))]
        for label, value in probes:
            config = copy.deepcopy(base)
            set_path(config, path, value)
            for p in check_run_config(config, kind, res):
                if p.path == path or p.path.startswith(path + ".") or p.path.startswith(path + "["):
                    hint = "; uniform and loguniform draw floats, use dist: int" if "integer" in p.message else ""
                    where = f"sweep.random.space.{path}.{label}{p.path[len(path):]}"
                    out.append(Problem(where, p.message + hint, got=p.got))
                    bad.add(path)
    space = {path: dist for path, dist in sweep.random.space.items() if path not in bad}
    random_spec = sweep.random.model_copy(update={"space": space}) if space else None
    return sweep.model_copy(update={"random": random_spec}), out


def _attribute(problem: Problem, point: Point) -> Problem:
    """Re-home a trial's problem at the swept value that caused it (unchanged if none did)."""
    for path, origin in point.origins.items():
        if problem.path == path or problem.path.startswith((path + ".", path + "[")):
            return Problem(origin + problem.path[len(path):], problem.message, got=problem.got)
    swept = [point.origins[p] for p in problem.involves if p in point.origins]
    if not swept:
        return problem
    also = f" (together with {', '.join(swept[1:])})" if len(swept) > 1 else ""
    return Problem(swept[0], f"makes {problem.path} invalid: {problem.message}{also}", got=problem.got)


def _declared_paths(raw_sweep: Any) -> set[str]:
    """Paths the user meant to sweep, read from the raw section even where it is broken."""
    if not isinstance(raw_sweep, dict):
        return set()
    random_part = raw_sweep.get("random")
    parts = [raw_sweep.get("grid"), random_part.get("space") if isinstance(random_part, dict) else None]
    return {str(path) for part in parts if isinstance(part, dict) for path in part}


def _trial_problems(raw: Mapping[str, Any], kind: str, sweep: Optional[SweepSpec], res: dict) -> list[Problem]:
    base = {name: copy.deepcopy(raw.get(name, {})) for name in config_sections(kind)}
    if sweep is None:
        points = [Point({}, {})]
    elif sweep.size() <= MAX_TRIALS:
        points = sweep_points(sweep, with_seeds=False)  # a seed cannot make a config invalid
    else:  # too many to enumerate (already reported): check each grid value on its own
        grid = sweep.grid or {}
        points = [Point({p: v}, {p: f"sweep.grid.{p}[{i}]"}) for p, vs in grid.items() for i, v in enumerate(vs)]
    declared = _declared_paths(raw.get("sweep"))
    out: list[Problem] = []
    for point in points:
        config = copy.deepcopy(base)
        for path, value in point.overrides.items():
            set_path(config, path, value)
        for problem in check_run_config(config, kind, res):
            attributed = _attribute(problem, point)
            if attributed is problem and declared.intersection(problem.involves):
                continue  # a cross-field rule on a setting whose sweep is broken: judge it once that is fixed
            out.append(attributed)
    return out


def validate_spec(raw: Mapping[str, Any], source: str = "<spec>") -> JobSpec:
    """Validate a parsed spec mapping; every problem is collected before raising.

    Raises:
        SpecError: one problem per line, ``source`` naming the file.
    """
    # `model:` with every key commented out parses as null: read it as "all defaults".
    raw = {k: v for k, v in raw.items() if not (v is None and k in (*SECTIONS, "sweep", "resources"))}
    problems: list[Problem] = []
    spec: Optional[JobSpec] = None
    try:
        spec = JobSpec.model_validate(raw)
    except ValidationError as e:
        problems += problems_from_pydantic(e, JobSpec)
    kind = raw.get("kind", "train")
    if kind not in KINDS:  # already reported; check the rest as the sections suggest
        kind = "throughput" if "throughput" in raw else None
    elif kind == "train" and "throughput" in raw:
        message = "only allowed with kind: throughput; remove it or set kind: throughput"
        problems.append(Problem("throughput", message))
    res, _ = _field_values(ResourcesSpec, raw.get("resources", {}), "resources")
    kind = kind or "train"
    sweep, sweep_problems = _usable_sweep(raw.get("sweep"), kind)
    problems += sweep_problems
    if sweep is not None:
        base = {name: raw.get(name, {}) for name in config_sections(kind)}
        sweep, random_problems = _check_random_values(sweep, base, kind, res)
        problems += random_problems
    problems += _trial_problems(raw, kind, sweep, res)
    if problems:
        raise SpecError(problems, file=source)
    assert spec is not None  # pydantic raised nothing, or there would be problems
    if spec.kind == "throughput" and spec.throughput is None:
        spec = spec.model_copy(update={"throughput": ThroughputSpec()})
    return spec


