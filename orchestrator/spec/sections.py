"""A spec section validated straight into the engine's dataclass (:mod:`rnn.config`).

The sections a trial is made of (``data``, ``model``, ``train``, ``throughput``) have one type
from the YAML to the row: the engine's frozen dataclasses, whose fields carry their limits as
``annotated_types`` metadata. This module runs pydantic over them through a ``TypeAdapter``,
strict and with unknown keys refused (:data:`rnn.config.VALIDATION`), so there is no second,
mirrored schema to keep in step.

Why JSON: pydantic's strict mode accepts only an *instance* of a dataclass from Python input,
while a JSON object is validated field by field, strictly (no ``"5"`` for an int, no ``true``
for a number, a list for a tuple). A parsed spec is JSON-shaped data, except for the few YAML
scalars JSON has no form for (a date, ``!!binary`` bytes); those are refused here first, at
their path, with a hint to quote them.

Two settings are read before pydantic sees them: ``train.compile``, where YAML 1.1 reads a bare
``off``/``on`` as a boolean (:func:`rnn.config.compile_setting`), and
``throughput.batch_sizes``, whose one message names everything a valid list must be.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from collections.abc import Mapping
from typing import Any, Optional, TypeVar

from pydantic import TypeAdapter, ValidationError

from orchestrator.errors import Problem
from orchestrator.spec.problems import problems_from_pydantic
from rnn.config import MAX_BATCH_SIZE, compile_setting

T = TypeVar("T")

#: A field value validation refused: cross-field rules skip it.
BAD: Any = object()

_JSON_SCALARS = (str, int, float, bool, type(None))


#: One adapter per section class, built on first use: building one compiles a validator (milliseconds),
#: and a sweep validates a section per point. A cache of pure functions of the class, nothing else.
_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(cls: type) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = TypeAdapter(cls)
    return adapter


def is_section(cls: type) -> bool:
    """True for an engine config dataclass (validated here), False for a pydantic model."""
    return dataclasses.is_dataclass(cls)


def defaults(cls: type) -> dict[str, Any]:
    """``{field: default}`` of a section dataclass (nested dataclasses as instances)."""
    return {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}


def field_names(cls: type) -> list[str]:
    """The keys a section accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(cls)]


def section_dict(section: Any) -> dict[str, Any]:
    """A validated section as plain JSON types (a tuple as a list): what a trial's config holds."""
    return _adapter(type(section)).dump_python(section, mode="json")


def batch_sizes_problem(value: Any) -> Optional[str]:
    """What is wrong with ``throughput.batch_sizes``, or None."""
    if value == "auto":
        return None
    expected = f"'auto' or a non-empty list of distinct integers between 1 and {MAX_BATCH_SIZE}"
    if not isinstance(value, (list, tuple)) or not value:
        return f"should be {expected}"
    for i, size in enumerate(value):
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH_SIZE:
            return f"should be {expected}; item [{i}] is {size!r}"
    if len(set(value)) != len(value):
        return f"should be {expected}; a size is repeated"
    return None


def _unsupported(value: Any, path: str) -> list[Problem]:
    """Values JSON (and so a config) has no form for, each at its path."""
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _unsupported(v, f"{path}.{k}")]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _unsupported(v, f"{path}[{i}]")]
    if isinstance(value, _JSON_SCALARS):
        return []
    what = "a date" if isinstance(value, (datetime.date, datetime.datetime)) else f"a {type(value).__name__}"
    return [Problem(path, f"YAML read this as {what}, which no setting takes; quote it if it is a name",
                    got=value)]


def validate_section(cls: type[T], raw: Any, prefix: str) -> tuple[Optional[T], dict[str, Any], list[Problem]]:
    """Validate one section mapping into ``cls``.

    Returns the section (None if any field was refused), its field values with defaults filled
    in and refused ones as :data:`BAD` (for the cross-field rules), and the problems, each
    under ``prefix`` (``"train"``).
    """
    if not isinstance(raw, Mapping):
        return None, dict.fromkeys(field_names(cls), BAD), [Problem(prefix, "should be a mapping", got=raw)]
    raw = dict(raw)
    problems: list[Problem] = []
    bad: set[str] = set()
    if "compile" in raw and "compile" in field_names(cls):
        raw["compile"] = compile_setting(raw["compile"])
    if "batch_sizes" in raw and "batch_sizes" in field_names(cls):
        message = batch_sizes_problem(raw["batch_sizes"])
        if message:
            problems.append(Problem(f"{prefix}.batch_sizes", message, got=raw["batch_sizes"]))
            bad.add("batch_sizes")
    for key, value in raw.items():
        found = _unsupported(value, f"{prefix}.{key}")
        if found:
            problems += found
            bad.add(key)
    checkable = {k: v for k, v in raw.items() if k not in bad}
    try:
        # JSON keeps NaN and infinity (as NaN/Infinity) so that pydantic names them.
        text = json.dumps(checkable, allow_nan=True)
        section = _adapter(cls).validate_json(text, strict=True)
    except ValidationError as e:
        problems += problems_from_pydantic(e, cls, (prefix,))
        locs = [err["loc"] for err in e.errors()]
        bad |= {str(loc[0]) for loc in locs if loc}
        section = None
    if problems:
        given = {**defaults(cls), **raw}
        return None, {k: BAD if k in bad else _plain(given[k]) for k in field_names(cls)}, problems
    assert section is not None
    return section, section_values(section), []


def section_values(section: Any) -> dict[str, Any]:
    """A section's field values by name, a nested section (``early_stopping``) as a mapping."""
    return {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}


def _plain(value: Any) -> Any:
    """A nested section as a mapping, as the cross-field rules read values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
