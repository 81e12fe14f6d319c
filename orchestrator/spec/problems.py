"""pydantic validation errors as spec :class:`~orchestrator.errors.Problem` lines.

A pydantic error carries a location tuple and an English message; this turns each into a
dotted path (``sweep.grid.model.cell[2]``), a shorter message, the value that was refused and,
for an unknown key, the valid keys and the close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Iterable
from typing import Any, Optional

from pydantic import BaseModel, ValidationError

from orchestrator.errors import MISSING, Problem

#: Tags of discriminated unions (sweep distributions): pydantic puts them in an error's location.
UNION_TAGS: frozenset[str] = frozenset({"loguniform", "uniform", "int", "choice"})

_REWRITES: tuple[tuple[str, str], ...] = (
    (r"^Input should be a valid dictionary or instance of \w+$", "should be a mapping"),
    (r"^Input should be a valid dictionary$", "should be a mapping"),
    (r"^Input should be an object$", "should be a mapping"),  # a section dataclass, validated from JSON
    (r"^(List|Dictionary) should have at least 1 item after validation, not 0$", "should not be empty"),
    (r"^Value error, ", ""),
    (r"^Input should be ", "should be "),
    (r"^String should ", "should "),
    (r"^List should ", "should "),
    (r"^Dictionary should ", "should "),
)


def dotted(loc: Iterable[Any]) -> str:
    """``("sweep", "grid", "model.cell", 2)`` -> ``"sweep.grid.model.cell[2]"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _fields(node: Any) -> Optional[dict[str, Any]]:
    """Field name -> annotation of a pydantic model or a dataclass (None for anything else)."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        return {name: f.annotation for name, f in node.model_fields.items()}
    if isinstance(node, type) and dataclasses.is_dataclass(node):
        hints = typing.get_type_hints(node, include_extras=True)
        return {f.name: hints[f.name] for f in dataclasses.fields(node)}
    return None


def _model_fields_at(root: type, loc: tuple[Any, ...]) -> Optional[list[str]]:
    """Field names of the model or dataclass reached by following ``loc`` from ``root`` (None if lost)."""
    node: Any = root
    for part in loc:
        node = _unwrap(node)
        fields = _fields(node)
        if fields is not None:
            if part not in fields:
                return None
            node = fields[part]
        elif getattr(node, "__origin__", None) is dict:
            node = node.__args__[1]
        elif getattr(node, "__origin__", None) in (list, tuple):
            node = node.__args__[0]
        elif isinstance(part, str) and part in UNION_TAGS:  # a discriminated union member
            members = [m for m in getattr(node, "__args__", ()) if _tag_of(m) == part]
            if not members:
                return None
            node = members[0]
        else:
            return None
    fields = _fields(_unwrap(node))
    return list(fields) if fields is not None else None


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated[...]`` and ``Optional[...]`` down to the interesting type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin is typing.Union:
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp  # a real union: the caller follows it by tag
            tp = args[0]
        else:
            return tp


def _tag_of(model: Any) -> Optional[str]:
    fields = getattr(model, "model_fields", {})
    if "dist" in fields:
        args = getattr(fields["dist"].annotation, "__args__", ())
        return args[0] if args else None
    return None


def problems_from_pydantic(error: ValidationError, root: type, prefix: tuple[Any, ...] = ()) -> list[Problem]:
    """Turn a ``pydantic.ValidationError`` raised by ``root.model_validate`` into problems.

    ``prefix`` is prepended to every location (e.g. ``("model",)`` when ``root`` is one section).
    Unknown keys get the valid keys and close matches; union tags are dropped from paths.
    """
    problems = []
    for err in error.errors():
        raw_loc = loc = tuple(err["loc"])
        # Drop discriminated-union tags: ("space", "train.lr", "loguniform", "low") -> (..., "low").
        loc = tuple(p for i, p in enumerate(loc) if not (i >= 2 and loc[i - 2] == "space" and p in UNION_TAGS))
        path = dotted(prefix + loc)
        kind = err["type"]
        got: Any = err.get("input", MISSING)
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's, a dataclass's
            valid = _model_fields_at(root, raw_loc[:-1]) or []
            message = "unknown key"
            close = difflib.get_close_matches(str(loc[-1]), valid, n=3, cutoff=0.6)
            if close:
                message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
            if valid:
                message += f" (valid keys: {', '.join(valid)})"
            problems.append(Problem(path, message))
        elif kind == "missing":
            problems.append(Problem(path, "required key is missing"))
        elif kind == "union_tag_invalid":
            expected = err.get("ctx", {}).get("expected_tags", "")
            problems.append(Problem(dotted(prefix + loc + ("dist",)), f"should be one of {expected}",
                                    got=err.get("ctx", {}).get("tag", MISSING)))
        elif kind == "union_tag_not_found":
            problems.append(Problem(path, "needs a dist key: one of 'loguniform', 'uniform', 'int', 'choice'"))
        else:
            message = err["msg"]
            for pattern, replacement in _REWRITES:
                message = re.sub(pattern, replacement, message)
            if kind == "value_error" and isinstance(got, dict):
                got = MISSING  # a whole-mapping check names the values it compared itself
            problems.append(Problem(path, message, got=got))
    return problems
