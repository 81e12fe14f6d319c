"""The record of one batch size's throughput measurement: plain data, no torch.

:class:`ThroughputRow` and :class:`ThroughputStatus` live here rather than in
:mod:`rnn.throughput` (which re-exports them) so that the results layer can derive
``throughput.parquet``'s schema from the row's fields without importing torch.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

__all__ = ["ThroughputRow", "ThroughputStatus", "mark_best"]


class ThroughputStatus(str, enum.Enum):
    """How one batch size ended: measured, out of memory (or refused / skipped as such), or another error."""

    OK = "ok"
    OOM = "oom"
    ERROR = "error"


@dataclass(frozen=True)
class ThroughputRow:
    """One batch size's measurement; the fields are ``throughput.parquet``'s columns, in order.

    ``status``: ``ok``, ``oom`` (ran out of memory, was estimated not to fit, or was
    skipped after a smaller size ran out) or ``error`` (any other exception; ``error`` has it).
    A plain string is accepted and converted; any other value is refused with the valid ones.
    The timing and memory fields are None unless ``status`` is ``ok``.

    ``peak_mem_mb``: CUDA, ``torch.cuda.max_memory_allocated`` over this batch size's steps
    (reset per size; includes weights, optimiser state and data). CPU, the *process's* peak
    resident set (``ru_maxrss``) so far: a lifetime high-water mark that never goes down, so
    it is only informative for the largest size measured yet. MPS, the driver's allocated
    memory after the steps (MPS has no peak counter).
    """

    batch_size: int
    status: ThroughputStatus
    samples_per_s: Optional[float]
    tokens_per_s: Optional[float]
    step_time_ms: Optional[float]
    step_time_ms_max: Optional[float]
    peak_mem_mb: Optional[float]
    device: str
    device_name: str
    precision: str
    torch_version: str
    error: Optional[str]
    is_best: bool = False
    #: The recurrence path: the layer-norm LSTM's (``fused-cpu``, ``triton``, ``torch``), ``parallel-scan`` for
    #: mingru/minlstm; None for other cells.
    recurrence: Optional[str] = None
    #: ``train.compile``: whether this size's steps ran compiled, and the seconds the compile took
    #: (before the warm-up steps, untimed); None when the size did not run.
    compiled: Optional[bool] = None
    compile_s: Optional[float] = None
    #: Whether float32 matmuls ran TF32 (see :func:`rnn.device.use_tf32`).
    tf32: Optional[bool] = None

    def __post_init__(self) -> None:
        try:
            status = ThroughputStatus(self.status)
        except ValueError:
            valid = ", ".join(s.value for s in ThroughputStatus)
            raise ValueError(f"ThroughputRow.status: got {self.status!r}; expected one of {valid}") from None
        object.__setattr__(self, "status", status)  # frozen: the one sanctioned normalisation

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (one of the ``throughput`` rows ``ResultsStore.commit_trial`` takes)."""
        return asdict(self)


def mark_best(rows: Sequence[ThroughputRow]) -> list[ThroughputRow]:
    """The rows with ``is_best`` set on the ``ok`` row with the highest finite samples/s (none without one).

    The one place the best batch size is decided: the results layer stores ``is_best`` as given.
    """
    ok = [
        r for r in rows
        if r.status is ThroughputStatus.OK and r.samples_per_s is not None and math.isfinite(r.samples_per_s)
    ]
    best = max(ok, key=lambda r: r.samples_per_s) if ok else None  # type: ignore[arg-type,return-value]
    return [replace(r, is_best=r is best) for r in rows]
