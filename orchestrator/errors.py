"""Spec problems and the error that carries them.

A bad spec is reported all at once: :class:`SpecError` holds a list of :class:`Problem`, and
each renders as one line, ``FILE: dotted.path: what is wrong (got X)``; problems found while
reading or parsing the file have no path and render as ``FILE: line N: what is wrong``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

_MISSING: Any = object()
_MAX_SHOWN_CHARS = 80


def show_value(value: Any) -> str:
    """Render a value the way the user wrote it in YAML (``true``, ``null``, ``'gru'``), truncated."""
    if value is True:
        text = "true"
    elif value is False:
        text = "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, (int, float)):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, default=repr, ensure_ascii=False)
        except (TypeError, ValueError):  # e.g. a circular structure
            text = repr(value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 3] + "..."
    return text


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec.

    ``path`` is the dotted key path (``train.lr``, ``sweep.grid.model.cell[2]``) or ``""`` for
    problems with the file itself; ``line`` (1-based) is set for YAML-level problems.
    ``involves`` names the config fields a cross-field check read (used to attribute a problem
    in a sweep trial to the swept value that caused it); it is not rendered.
    """

    path: str
    message: str
    got: Any = _MISSING
    line: Optional[int] = None
    involves: tuple[str, ...] = field(default=(), compare=False)

    def render(self, file: str) -> str:
        """``FILE: path: message (got X)``, or ``FILE: line N: message`` for YAML problems."""
        where = self.path if self.path else (f"line {self.line}" if self.line is not None else "")
        text = f"{file}: {where}: {self.message}" if where else f"{file}: {self.message}"
        if self.got is not _MISSING:
            text += f" (got {show_value(self.got)})"
        return text


class SpecError(Exception):
    """A job spec that cannot be used; carries every problem found, one line each."""

    def __init__(self, problems: Iterable[Problem], file: Optional[str] = None) -> None:
        self.problems: list[Problem] = dedupe(problems)
        self.file = file
        super().__init__(str(self))

    def lines(self, file: Optional[str] = None) -> list[str]:
        """One rendered line per problem, prefixed with ``file`` (default: the file it came from)."""
        name = file if file is not None else (self.file or "<spec>")
        return [p.render(name) for p in self.problems]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def dedupe(problems: Iterable[Problem]) -> list[Problem]:
    """Drop repeated problems (same rendered line), keeping first occurrences in order."""
    seen: set[str] = set()
    out: list[Problem] = []
    for p in problems:
        key = p.render("")
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


# --- pydantic errors -> problems -----------------------------------------------------------

#: Tags of discriminated unions (sweep distributions): pydantic puts them in an error's location.
UNION_TAGS: frozenset[str] = frozenset({"loguniform", "uniform", "int", "choice"})

_REWRITES: tuple[tuple[str, str], ...] = (
    (r"^Input should be a valid dictionary or instance of \w+$", "should be a mapping"),
    (r"^Input should be a valid dictionary$", "should be a mapping"),
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


def _model_fields_at(root: type, loc: tuple[Any, ...]) -> Optional[list[str]]:
    """Field names of the pydantic model reached by following ``loc`` from ``root`` (None if lost)."""
    from pydantic import BaseModel  # local: keep this module importable without pydantic

    node: Any = root
    for part in loc:
        node = _unwrap(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            if part not in node.model_fields:
                return None
            node = node.model_fields[part].annotation
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
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return None


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated[...]`` and ``Optional[...]`` down to the interesting type."""
    import typing

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


def problems_from_pydantic(error: Any, root: type, prefix: tuple[Any, ...] = ()) -> list[Problem]:
    """Turn a ``pydantic.ValidationError`` raised by ``root.model_validate`` into problems.

    ``prefix`` is prepended to every location (e.g. ``("model",)`` when ``root`` is one section).
    Unknown keys get the valid keys and close matches; union tags are dropped from paths.
    """
    import difflib
    import re

    problems = []
    for err in error.errors():
        raw_loc = loc = tuple(err["loc"])
        # Drop discriminated-union tags: ("space", "train.lr", "loguniform", "low") -> (..., "low").
        loc = tuple(p for i, p in enumerate(loc) if not (i >= 2 and loc[i - 2] == "space" and p in UNION_TAGS))
        path = dotted(prefix + loc)
        kind = err["type"]
        got: Any = err.get("input", _MISSING)
        if kind == "extra_forbidden":
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
                                    got=err.get("ctx", {}).get("tag", _MISSING)))
        elif kind == "union_tag_not_found":
            problems.append(Problem(path, "needs a dist key: one of 'loguniform', 'uniform', 'int', 'choice'"))
        else:
            message = err["msg"]
            for pattern, replacement in _REWRITES:
                message = re.sub(pattern, replacement, message)
            if kind == "value_error" and isinstance(got, dict):
                got = _MISSING  # a whole-mapping check names the values it compared itself
            problems.append(Problem(path, message, got=got))
    return problems


class UsageError(Exception):
    """Bad input that is not in the spec file itself (an unusable output folder, a corpus that is
    too short, a machine that cannot fit a trial); the CLI prints it and exits with status 2."""
