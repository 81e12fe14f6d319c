"""Fault injection for chaos tests and drills: make a chosen trial fail in a chosen way.

Faults are opt-in through the ``RNN_ORCH_FAULTS`` environment variable of the *driver*
(a JSON list), and travel to the actors as explicit arguments, so a worker never reads the
environment for them. Each fault::

    {"trial": "<trial_id or *>", "kind": "oom" | "nan" | "error" | "exit" | "commit",
     "at_step": 3, "attempts": [1]}

- ``oom`` raises ``torch.OutOfMemoryError`` at that step, as a CUDA allocation failure would;
- ``nan`` fills the first parameter with NaN, so the trainer's own divergence check fires;
- ``error`` raises a ``RuntimeError``;
- ``exit`` kills the worker process with ``os._exit`` (a lost actor, like a SIGKILL); a worker
  that runs in the driver's process (:class:`~orchestrator.run.local_backend.LocalBackend`)
  raises :class:`WorkerExit` instead, which its backend reports as the worker lost;
- ``commit`` acts in the *driver*: committing the trial's results fails as on a full disk
  (``ResultsError`` from ``OSError(ENOSPC)``, what ``ResultsStore.commit_trial`` raises then),
  so the trial is not recorded as finished and a rerun trains it again.

For throughput trials ``at_batch_size`` names the batch size at which an ``oom`` or ``error``
fault is raised (before it is measured).

``attempts`` (default: every attempt) limits the fault to those attempts of the trial, so a
test can kill attempt 1 and let the retry succeed.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

ENV_VAR = "RNN_ORCH_FAULTS"
KINDS = ("oom", "nan", "error", "exit", "commit")


class WorkerExit(BaseException):
    """An ``exit`` fault in a worker that shares the driver's process: it must not end the process.

    A ``BaseException``, so the trainer's ``except Exception`` does not report it as the trial's error.
    """


@dataclass(frozen=True)
class Fault:
    trial: str
    kind: str
    at_step: int = 1
    attempts: tuple[int, ...] = field(default_factory=tuple)
    at_batch_size: Optional[int] = None

    def applies(self, trial_id: str, attempt: int) -> bool:
        return self.trial in ("*", trial_id) and (not self.attempts or attempt in self.attempts)


def faults_from_env(environ: Optional[dict[str, str]] = None) -> list[Fault]:
    """Parse ``RNN_ORCH_FAULTS``; an empty or unset variable means no faults."""
    raw = (environ if environ is not None else os.environ).get(ENV_VAR, "").strip()
    if not raw:
        return []
    try:
        items = json.loads(raw)
        faults = [
            Fault(
                trial=str(d["trial"]),
                kind=str(d["kind"]),
                at_step=int(d.get("at_step", 1)),
                attempts=tuple(int(a) for a in d.get("attempts", ())),
                at_batch_size=int(d["at_batch_size"]) if d.get("at_batch_size") is not None else None,
            )
            for d in items
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{ENV_VAR} is not a JSON list of faults ({e}): {raw[:200]!r}") from e
    for f in faults:
        if f.kind not in KINDS:
            raise ValueError(f"{ENV_VAR}: unknown fault kind {f.kind!r}; expected one of {', '.join(KINDS)}")
    return faults


def raise_commit_fault(faults: tuple[Fault, ...], trial_id: str, attempt: int, job_dir: str) -> None:
    """Raise what a full disk makes ``commit_trial`` raise, when a ``commit`` fault applies to this trial."""
    from orchestrator.results import ResultsError

    if any(f.kind == "commit" and f.applies(trial_id, attempt) for f in faults):
        cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise ResultsError(
            f"cannot write the results of trial {trial_id} under {job_dir}: {cause.strerror} "
            "(injected commit fault); free space and run the same command again to resume"
        ) from cause


def _raise(fault: Fault, where: str, hard_exit: bool) -> None:
    import torch

    if fault.kind == "oom":
        raise torch.OutOfMemoryError(f"CUDA out of memory. (injected fault at {where})")
    if fault.kind == "error":
        raise RuntimeError(f"injected fault at {where}")
    if fault.kind == "exit":
        if not hard_exit:
            raise WorkerExit(f"injected exit at {where}")
        os._exit(137)


def batch_hook(fault: Fault, hard_exit: bool = True) -> Callable[[int], None]:
    """A throughput ``batch_hook`` that triggers ``fault`` at its batch size (``hard_exit``: see :func:`_raise`)."""

    def hook(batch_size: int) -> None:
        if fault.at_batch_size is None or batch_size == fault.at_batch_size:
            _raise(fault, f"batch size {batch_size}", hard_exit)

    return hook


def step_hook(fault: Fault, hard_exit: bool = True) -> Callable[[int, Any], None]:
    """A trainer ``step_hook`` that triggers ``fault`` once the run reaches its step (``hard_exit``:
    an ``exit`` fault ends the process; False: it raises :class:`WorkerExit`)."""

    def hook(step: int, model: Any) -> None:
        if step < fault.at_step:
            return
        if fault.kind == "nan":
            import torch

            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        else:
            _raise(fault, f"step {step}", hard_exit)

    return hook
