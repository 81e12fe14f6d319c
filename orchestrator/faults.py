"""Fault injection for chaos tests and drills: make a chosen trial fail in a chosen way.

Faults are opt-in through the ``RNN_ORCH_FAULTS`` environment variable of the *driver*
(a JSON list), and travel to the actors as explicit arguments, so a worker never reads the
environment for them. Each fault::

    {"trial": "<trial_id or *>", "kind": "oom" | "nan" | "error" | "exit",
     "at_step": 3, "attempts": [1]}

- ``oom`` raises ``torch.OutOfMemoryError`` at that step, as a CUDA allocation failure would;
- ``nan`` fills the first parameter with NaN, so the trainer's own divergence check fires;
- ``error`` raises a ``RuntimeError``;
- ``exit`` kills the worker process with ``os._exit`` (a lost actor, like a SIGKILL).

``attempts`` (default: every attempt) limits the fault to those attempts of the trial, so a
test can kill attempt 1 and let the retry succeed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

ENV_VAR = "RNN_ORCH_FAULTS"
KINDS = ("oom", "nan", "error", "exit")


@dataclass(frozen=True)
class Fault:
    trial: str
    kind: str
    at_step: int = 1
    attempts: tuple[int, ...] = field(default_factory=tuple)

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
            )
            for d in items
        ]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{ENV_VAR} is not a JSON list of faults ({e}): {raw[:200]!r}") from e
    for f in faults:
        if f.kind not in KINDS:
            raise ValueError(f"{ENV_VAR}: unknown fault kind {f.kind!r}; expected one of {', '.join(KINDS)}")
    return faults


def step_hook(fault: Fault) -> Callable[[int, Any], None]:
    """A trainer ``step_hook`` that triggers ``fault`` once the run reaches its step."""

    def hook(step: int, model: Any) -> None:
        if step < fault.at_step:
            return
        import torch

        if fault.kind == "oom":
            raise torch.OutOfMemoryError(f"CUDA out of memory. (injected fault at step {step})")
        if fault.kind == "nan":
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        elif fault.kind == "error":
            raise RuntimeError(f"injected fault at step {step}")
        elif fault.kind == "exit":
            os._exit(137)

    return hook
