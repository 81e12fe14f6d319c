"""What a training run reports: per-evaluation records, progress events and the final result.

The trainer yields :class:`TrainEvent` objects from ``Trainer.iter_fit()``; the orchestrator
streams them from a Ray actor to the driver. Everything here is plain data (picklable, and
``asdict``-able into a Parquet row).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Optional


class TrialStatus(str, enum.Enum):
    """How a run ended. ``completed``, ``early_stopped``, ``diverged`` and ``paused`` come from the
    engine, the rest from the orchestrator (``timeout``: the trial hit
    ``resources.trial_timeout_s``, its hard wall-clock cap). ``paused``: the run stopped at a
    scheduler's ``pause_at_step`` and left a resume checkpoint; it is neither a success nor final.
    ``pruned``: successive halving (``sweep.scheduler``) decided a paused trial will never be
    resumed; final, neither a success nor a failure (its curve and best checkpoint are kept)."""

    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    DIVERGED = "diverged"
    FAILED = "failed"
    OOM = "oom"
    TIMEOUT = "timeout"
    PAUSED = "paused"
    PRUNED = "pruned"

    def is_success(self) -> bool:
        return self in (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED)

    def is_terminal(self) -> bool:
        """False only for ``paused``: a paused trial is resumed (or pruned) later."""
        return self is not TrialStatus.PAUSED


@dataclass(frozen=True)
class EvalRecord:
    """Metrics at one evaluation. Losses are nats per token; bpc is bits per *character*.

    ``train_loss`` is the same quantity as ``val_loss`` (forward direction, no label smoothing)
    averaged over the training batches since the previous evaluation, so their gap is
    overfitting. ``train_objective`` is what the optimiser minimised over those batches (with
    label smoothing; for bidirectional models the mean of both directions). ``val_bpc`` charges
    a word model's ``[UNK]`` tokens for spelling their words out (see :mod:`rnn.bpc`).
    """

    step: int
    epoch: float
    train_loss: float
    val_loss: float
    val_bpc: float
    val_perplexity: float
    val_accuracy: float
    lr: float
    grad_norm: float
    samples_per_s: float
    tokens_per_s: float
    elapsed_s: float
    train_objective: Optional[float] = None  # None in records written before it existed


class EventKind(str, enum.Enum):
    """What a :class:`TrainEvent` reports (str-valued: ``EventKind.START == "start"``).

    - ``start``: ``info`` holds params, device, precision, vocab_size, corpus_sha256, ...
    - ``eval``: ``record`` is set.
    - ``checkpoint``: validation improved; ``checkpoint`` is the path of the new best file.
    - ``paused``: the run reached ``pause_at_step``; ``checkpoint`` is the resume file
      (``last.pt``) and ``record`` the evaluation at that step. An ``end`` event follows.
    - ``heartbeat``: the run is alive (only with ``Trainer(heartbeat_s=...)``). ``info["phase"]``
      is ``training`` (sent at most every ``heartbeat_s`` between evaluations, with
      ``steps_per_s``, ``samples_per_s`` and ``train_loss``, the mean since the last evaluation)
      or ``evaluating`` (sent as an evaluation starts: nothing more comes until it ends).
    - ``end``: ``result`` is set. Always the last event.
    """

    START = "start"
    EVAL = "eval"
    CHECKPOINT = "checkpoint"
    PAUSED = "paused"
    HEARTBEAT = "heartbeat"
    END = "end"


@dataclass(frozen=True)
class TrainEvent:
    """One progress event; ``kind`` (an :class:`EventKind`) says which fields are set.

    A plain string kind is accepted and converted; any other value is refused with the valid ones.
    """

    kind: EventKind
    step: int
    record: Optional[EvalRecord] = None
    checkpoint: Optional[str] = None
    result: Optional[TrainResult] = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            kind = EventKind(self.kind)
        except ValueError:
            valid = ", ".join(k.value for k in EventKind)
            raise ValueError(f"TrainEvent.kind: got {self.kind!r}; expected one of {valid}") from None
        object.__setattr__(self, "kind", kind)  # frozen: the one sanctioned normalisation


@dataclass(frozen=True)
class TrainResult:
    """The outcome of one run."""

    status: TrialStatus
    steps: int
    params: int
    device: str
    precision: str
    train_time_s: float
    eval_time_s: Optional[float] = None  # of train_time_s, the seconds spent evaluating
    best_val_loss: Optional[float] = None
    best_val_bpc: Optional[float] = None
    best_val_accuracy: Optional[float] = None
    best_step: Optional[int] = None
    best_checkpoint: Optional[str] = None
    corpus_sha256: Optional[str] = None
    vocab_size: Optional[int] = None
    error: Optional[str] = None
    evals: tuple[EvalRecord, ...] = ()
