"""The seam between the dispatch loop and what runs trials: a small backend protocol.

The dispatcher (:mod:`orchestrator.run.dispatch`) owns the policy: which trial runs next, how
many workers to keep, what is retried, when a silent trial counts as stalled. A backend owns
the mechanism: starting workers, streaming a trial's events back, and saying when a worker was
lost. :class:`~orchestrator.run.ray_backend.RayBackend` runs trials on Ray;
:class:`~orchestrator.run.local_backend.LocalBackend` in the driver's own process, without Ray
(in the spirit of submitit's local and debug executors); tests also drive the loop through a
scripted backend. ``run_job(job, backend=...)`` takes any of them: it calls :meth:`Backend.open`
before anything is locked or written, and :meth:`Backend.shutdown` once, however the run ends.

Everything a backend reports comes back from :meth:`Backend.poll` as :class:`Notice` objects,
so the loop never blocks on one worker and never sees a Ray exception.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Protocol

from orchestrator.run.events import Event
from orchestrator.run.faults import Fault
from rnn.config import RunConfig, ThroughputConfig

if TYPE_CHECKING:
    from orchestrator.spec import ResourcesSpec


class ClusterLostError(Exception):
    """The cluster itself is gone (the head or its GCS stopped answering); the argument says how.

    Its text is the whole message a user sees, resume advice included.
    """

    def __str__(self) -> str:
        how = self.args[0] if self.args else "it stopped answering"
        return (f"lost the Ray cluster: {how}; every finished trial is on disk: run the same command again "
                "once the cluster is back to resume")


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: how a Ray error is named in logs and trial rows."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else 'no message'}"


@dataclass(frozen=True)
class Assignment:
    """One attempt of one trial, as plain data for the worker: the trial's own config types
    (``rnn.config``'s dataclasses, which pickle as they are), no dict in between."""

    trial_id: str
    run_config: RunConfig
    throughput_config: Optional[ThroughputConfig]
    attempt: int
    resume: Optional[bytes] = None
    fault: Optional[Fault] = None
    #: Successive halving: stop at this step with a resume checkpoint (the trial's next rung).
    pause_at: Optional[int] = None

    @property
    def throughput(self) -> bool:
        return self.throughput_config is not None


class NoticeKind(str, enum.Enum):
    READY = "ready"  # a started worker is up and can take a trial
    START_FAILED = "start_failed"  # a worker could not be started (``setup_failed``: its runtime env)
    EVENT = "event"  # the next event of the worker's trial
    END = "end"  # the worker's trial stream ended (after its last event)
    LOST = "lost"  # the worker (or its node) died; ``oom``: killed by Ray's memory monitor


@dataclass(frozen=True)
class Notice:
    kind: NoticeKind
    worker: int
    event: Optional[Event] = None
    reason: str = ""
    oom: bool = False
    setup_failed: bool = False


class Backend(Protocol):
    """What the dispatch loop needs from whatever runs the trials. Workers are ints."""

    def open(self, resources: ResourcesSpec) -> None:
        """Get ready to start workers of this reservation (Ray: connect). Writes nothing; may raise
        ``UsageError`` (an address that does not answer). A second call is a no-op."""

    def shutdown(self) -> None:
        """Let go of what :meth:`open` took (Ray: stop an embedded instance); safe to call twice."""

    def capacity(self) -> Optional[int]:
        """Workers that fit at once, or None where the cluster may grow (an autoscaler, nodes
        joining by hand): then workers beyond what fits wait, and that wait is the demand."""

    def start_worker(self) -> int:
        """Ask for a worker; a ``READY`` or ``START_FAILED`` notice about it follows."""

    def launch(self, worker: int, assignment: Assignment) -> None:
        """Run ``assignment`` on a ready, idle worker; its events follow as notices."""

    def poll(self, timeout_s: float) -> list[Notice]:
        """What happened since the last call, waiting up to ``timeout_s`` for something."""

    def kill(self, worker: int) -> None:
        """Stop a worker at once (starting, idle or busy); nothing more is heard of it."""

    def unhostable(self) -> Optional[str]:
        """Why no node can ever host one trial's resources, or None while one can (or may)."""

    def check(self) -> None:
        """Raise :class:`ClusterLostError` when the cluster itself is gone."""

    def close(self) -> None:
        """Stop every worker; withdraws any demand for resources."""
