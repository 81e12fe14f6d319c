"""The errors every package may raise, and the one table of exit statuses.

A bad spec is reported all at once: :class:`SpecError` holds a list of :class:`Problem`, and
each renders as one line, ``FILE: dotted.path: what is wrong (got X)``; problems found while
reading or parsing the file have no path and render as ``FILE: line N: what is wrong``.
:class:`UsageError` is any other bad input. Both end a command with :attr:`ExitCode.BAD_INPUT`.
(pydantic's errors become problems in :mod:`orchestrator.spec.problems`: this module needs no
pydantic.)
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

#: "No value shown": a problem whose ``got`` is this renders without ``(got ...)``.
MISSING: Any = object()
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
    got: Any = MISSING
    line: Optional[int] = None
    involves: tuple[str, ...] = field(default=(), compare=False)

    def render(self, file: str) -> str:
        """``FILE: path: message (got X)``, or ``FILE: line N: message`` for YAML problems."""
        where = self.path if self.path else (f"line {self.line}" if self.line is not None else "")
        text = f"{file}: {where}: {self.message}" if where else f"{file}: {self.message}"
        if self.got is not MISSING:
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


class ExitCode(enum.IntEnum):
    """Exit statuses of every command (``run`` documents them in its ``--help``)."""

    OK = 0
    #: a trial failed, or the results folder could not be written
    FAILED = 1
    #: bad input: a spec, an argument, an unusable folder, a checkpoint that cannot be read
    BAD_INPUT = 2
    #: stopped by SIGINT/SIGTERM (128 + SIGINT, as shells report it)
    INTERRUPTED = 130


class UsageError(Exception):
    """Bad input that is not in the spec file itself (an unusable output folder, a corpus that is
    too short, a machine that cannot fit a trial); the CLI prints it and exits with status 2."""
