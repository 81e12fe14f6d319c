"""What the trackers' process needs of the driver's side: the :class:`Sink` protocol, the writes
a :class:`~orchestrator.track.tracker.Tracker` sends (each applied to every sink), and how a sink
and an error are named in the log. Imports only the trackers' views, so that the trackers'
process (:mod:`~orchestrator.track.writer`) starts without the driver's packages."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional, Protocol

from orchestrator.track.views import Point, TrialEnd, TrialView

#: How long what a sink buffers may wait before it is written.
FLUSH_S = 1.0


class Sink(Protocol):
    name: str

    def holds(self, trial_id: str, status: str) -> bool: ...
    def log(self, view: TrialView, points: list[Point]) -> None: ...
    def end(self, view: TrialView, end: Optional[TrialEnd]) -> None: ...
    def finish(self, report_files: list[Path]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def log_points(sink: Sink, view: TrialView, points: list[Point]) -> None:
    sink.log(view, points)


def finish_job(sink: Sink, report_files: list[Path]) -> None:
    """The job is over: the report's files, and the sink's job run ended."""
    sink.finish(report_files)


def write_trial(sink: Sink, view: TrialView, points: list[Point], end: Optional[TrialEnd]) -> None:
    sink.log(view, points)
    sink.end(view, end)


def sync_trial(sink: Sink, view: TrialView, points: list[Point], end: Optional[TrialEnd]) -> None:
    """A committed trial from the job folder: nothing to do where the sink holds its end already
    (a finished job run again: no reading back of every trial's history)."""
    if end is None or not sink.holds(view.trial_id, end.status):
        write_trial(sink, view, points, end)


def sink_name(opener: Callable[[], Sink]) -> str:
    """What a sink's opener says it opens (its ``sink_name``, else the sink class's ``name``)."""
    name = getattr(opener, "sink_name", None) or getattr(getattr(opener, "func", opener), "name", None)
    return name if isinstance(name, str) else "a tracker"


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = text.splitlines()[0] if text else "no message"
    return line if len(line) <= 200 else line[:197] + "..."
