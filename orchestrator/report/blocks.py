"""What a report is made of: a list of blocks, and the small formatting rules their text follows.

Sections (:mod:`~orchestrator.report.sections`, :mod:`~orchestrator.report.training`, ...)
build blocks from the tables; :mod:`~orchestrator.report.render` turns the one list into
Markdown and HTML, so both formats always say the same thing. Every block's text is plain
text (names, paths and error messages come from users); the renderers escape it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

from rnn.events import TrialStatus

__all__ = [
    "SCHEDULER_STATUSES",
    "SEED",
    "Block",
    "Code",
    "Figure",
    "Heading",
    "Para",
    "Table",
    "fmt_num",
    "mapping",
    "one_line",
]

SEED = "train.seed"
#: Statuses a sweep scheduler gives (successive halving): ``pruned`` stopped at a rung because
#: others did better, ``paused`` waiting at a rung. Neither is a failure; a pruned trial's metric
#: is from a shorter budget, so it is shown with its curves but kept out of the statistics.
SCHEDULER_STATUSES: frozenset[TrialStatus] = frozenset({TrialStatus.PRUNED, TrialStatus.PAUSED})
_REASON_CHARS = 200


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str
    box: str = ""  # "answer" (the conclusion) or "live" (the live banner): a highlighted box, bold in Markdown


@dataclass(frozen=True)
class Table:
    headers: tuple[str, ...] | list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    svg: str
    caption: str


@dataclass(frozen=True)
class Code:
    """Preformatted text: a command line, or generated text shown exactly as it came."""

    text: str


@dataclass(frozen=True)
class Link:
    """A paragraph that links a file beside the report (a relative ``href``): ``text`` then the link."""

    text: str
    href: str


Block = Union[Heading, Para, Table, Figure, Code, Link]


def fmt_num(x: Any, fmt: str = ".4f") -> str:
    """A table cell for a number (``—`` for missing, ``NaN``, booleans in lower case)."""
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    if isinstance(x, bool):
        return str(x).lower()
    return format(x, fmt) if isinstance(x, (int, float)) else str(x)


def one_line(error: Optional[str]) -> str:
    """One line of an error: a traceback's last line (the exception), else the first line."""
    lines = [ln.strip() for ln in (error or "").strip().splitlines() if ln.strip()]
    if not lines:
        return "—"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


def mapping(value: Any) -> dict:
    """A manifest entry that should be a mapping, or {} (an edited manifest must not crash the report)."""
    return value if isinstance(value, dict) else {}
