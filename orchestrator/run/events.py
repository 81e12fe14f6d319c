"""What a trainer actor streams to the driver: one small dataclass per kind of event.

Plain, picklable data (they cross the Ray boundary). A training trial yields ``Started``,
then ``Evaluated`` / ``Checkpointed`` as they happen (and a ``Beat`` every
:data:`HEARTBEAT_S` between evaluations), then ``Ended``; a throughput trial yields
``Started``, one ``Measured`` per batch size, then ``Ended`` with no result. ``Raised`` (an
exception inside the trainer, with the worker's traceback) is always the last event when present.
Only a lost worker or node surfaces as a Ray error on the driver, never as an event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

from rnn.events import EvalRecord, TrainResult

#: How often a training trial says it is alive between evaluations (a :class:`Beat`): rare enough
#: to cost nothing measurable, often enough that a hung worker is caught in about a minute.
HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class Started:
    """The trial is running: params, device, precision, corpus, host, pid, ..."""

    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluated:
    record: EvalRecord


@dataclass(frozen=True)
class Checkpointed:
    """A new best checkpoint, as bytes: it travels to the driver, so no shared filesystem is needed."""

    step: int
    data: bytes


@dataclass(frozen=True)
class Measured:
    """One batch size of a throughput trial (an ``rnn.throughput.ThroughputRow``)."""

    row: Any


@dataclass(frozen=True)
class Ended:
    """The last event of a trial that ran to its end; ``result`` is None for throughput trials."""

    result: Optional[TrainResult]


@dataclass(frozen=True)
class Paused:
    """The last event of a trial that stopped at its successive-halving rung (``pause_at``).

    ``data`` is the resume checkpoint (``last.pt``: the state at ``step``, which the best
    checkpoint need not be); ``result`` is the engine's result with status ``paused``, its
    evaluations included.
    """

    step: int
    data: bytes
    result: TrainResult


@dataclass(frozen=True)
class Beat:
    """A training trial is alive: sent every :data:`HEARTBEAT_S` between evaluations (``phase``
    ``training``, with its pace, the mean train loss since the last evaluation and, for a
    ``schedule_by: time`` run, its training seconds so far), and once as each slow step that
    sends nothing until it ends begins (``phase`` ``preparing data``, ``compiling``, ``evaluating``)."""

    step: int
    phase: str
    steps_per_s: Optional[float] = None
    samples_per_s: Optional[float] = None
    train_loss: Optional[float] = None
    trained_s: Optional[float] = None

#: Phases of set-up that may take long and send nothing until they end (a big corpus's
#: tokenizer, a compile): their stall timeout has a floor of its own.
SLOW_PHASES = ("preparing data", "compiling")


@dataclass(frozen=True)
class Raised:
    """An exception inside the trainer: ``Type: message`` first, then the worker's traceback."""

    error: str
    oom: bool = False


Event = Union[Started, Evaluated, Checkpointed, Measured, Ended, Paused, Raised, Beat]
