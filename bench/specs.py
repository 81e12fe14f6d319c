"""Job specs for the bench CLIs, with the spec layer where it is installed and without it where not.

:func:`load_trials` validates and expands a spec with :func:`orchestrator.spec.load_job` when
pydantic is importable. A bare GPU image has no pydantic (nor Ray): there the YAML is read plainly
into :mod:`rnn.config`'s dataclasses, which have the spec schema's defaults field for field (a test
keeps them in step) but check no range, and a ``sweep`` with ``grid``, ``variants`` and ``seeds``
expands in the orchestrator's order: variants outermost, then the grid (its first path slowest),
seeds innermost (see :mod:`orchestrator.spec.expand`). The trials are the ones ``python -m
orchestrator run`` would run (``tests/test_bench.py`` compares the two paths on the specs in
``jobs/``); only their ids differ: the plain path has no validated config to hash and calls every
trial ``unvalidated``. ``sweep.random`` and ``sweep.scheduler`` need the spec layer.
"""

from __future__ import annotations

import copy
import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from rnn.config import RunConfig, ThroughputConfig, set_path

log = logging.getLogger(__name__)

#: The trial id of every trial read without the spec layer.
UNVALIDATED = "unvalidated"
#: The sweep forms the plain reader expands; others need pydantic.
PLAIN_SWEEP_KEYS = ("grid", "variants", "seeds")


class SpecReadError(ValueError):
    """A spec the plain reader cannot run; the message names the file and the fix."""


@dataclass(frozen=True)
class BenchTrial:
    """One trial of a spec: its id, the swept values (always with ``train.seed``), and the engine's configs."""

    trial_id: str
    overrides: dict[str, Any]
    run_config: RunConfig
    throughput_config: Optional[ThroughputConfig]


class _PlainLoader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float, as the spec layer's loader does (YAML 1.1 wants ``1.0e-4``)."""


_PlainLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def read_plain(path: str) -> dict[str, Any]:
    """The spec file as a mapping (no validation)."""
    try:
        doc = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_PlainLoader)  # a SafeLoader
    except (OSError, yaml.YAMLError) as e:
        raise SpecReadError(f"{path}: cannot be read ({e})") from e
    if not isinstance(doc, dict):
        raise SpecReadError(f"{path}: should be a mapping of sections (got {type(doc).__name__})")
    return doc


def plain_points(sweep: Mapping[str, Any], source: str) -> list[tuple[dict[str, Any], Optional[int]]]:
    """``(overrides, seed)`` per trial of ``sweep``, in the orchestrator's order; seed None keeps the spec's."""
    unsupported = sorted(set(sweep) - set(PLAIN_SWEEP_KEYS))
    if unsupported:
        raise SpecReadError(
            f"{source}: sweep.{unsupported[0]} needs the spec layer (pydantic), which is not installed here; "
            f"install it, or write the trials out as a grid ({', '.join(PLAIN_SWEEP_KEYS)} expand without it)"
        )
    grid: Mapping[str, Sequence[Any]] = sweep.get("grid") or {}
    cells = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    variants: list[Mapping[str, Any]] = list(sweep.get("variants") or [{}])
    seeds: list[Optional[int]] = list(sweep.get("seeds") or [None])
    return [({**variant, **cell}, seed) for variant in variants for cell in cells for seed in seeds]


def plain_trials(doc: Mapping[str, Any], source: str) -> list[BenchTrial]:
    """The trials of an unvalidated spec mapping (see the module docstring)."""
    kind = doc.get("kind", "train")
    trials = []
    for overrides, seed in plain_points(doc.get("sweep") or {}, source):
        sections = {name: copy.deepcopy(doc.get(name) or {}) for name in ("data", "model", "train", "throughput")}
        for path, value in overrides.items():
            set_path(sections, path, value)
        if seed is not None:
            set_path(sections, "train.seed", seed)
        try:
            cfg = RunConfig.from_dict({k: sections[k] for k in ("data", "model", "train")})
            tp = None
            if kind == "throughput":
                settings = dict(sections["throughput"])
                if isinstance(settings.get("batch_sizes"), list):
                    settings["batch_sizes"] = tuple(settings["batch_sizes"])
                tp = ThroughputConfig(**settings)
        except TypeError as e:  # an unknown key: the dataclasses name it
            raise SpecReadError(f"{source}: {e} (the spec layer, with pydantic, says more)") from e
        trials.append(BenchTrial(UNVALIDATED, {**overrides, "train.seed": cfg.train.seed}, cfg, tp))
    return trials


def _load_plain(spec_path: str, kind: str) -> list[BenchTrial]:
    doc = read_plain(spec_path)
    found = doc.get("kind", "train")
    if found != kind:
        raise SpecReadError(f"{spec_path}: kind is {found!r}; expected a kind: {kind} spec")
    return plain_trials(doc, spec_path)


def load_trials(spec_path: str, kind: str) -> list[BenchTrial]:
    """Every trial of the ``kind`` spec at ``spec_path``: validated where pydantic is installed, else plain.

    Raises:
        orchestrator.errors.SpecError: the spec layer found problems (it is installed).
        SpecReadError: the plain reader cannot run it, or its kind is not ``kind``.
    """
    try:
        from orchestrator.spec import load_job
    except ImportError as e:  # no pydantic here
        log.warning("%s; reading %s without validation", e, spec_path)
        return _load_plain(spec_path, kind)
    job = load_job(spec_path)
    if job.spec.kind != kind:
        raise SpecReadError(f"{spec_path}: kind is {job.spec.kind!r}; expected a kind: {kind} spec")
    return [BenchTrial(t.trial_id, dict(t.overrides), t.run_config, t.throughput_config) for t in job.trials]
