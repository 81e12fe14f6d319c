"""rnn-orchestrator: run recurrent language-model experiments from YAML specs on Ray.

Four packages, each with a small public face: :mod:`orchestrator.spec` (YAML to trials),
:mod:`orchestrator.run` (trials on Ray), :mod:`orchestrator.results` (the job folder) and
:mod:`orchestrator.report` (the report); :mod:`orchestrator.cli` and :mod:`orchestrator.plan`
sit on top. Names below are imported on first use, so ``import orchestrator`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "load_job": "orchestrator.spec",
    "Job": "orchestrator.spec",
    "run_job": "orchestrator.run",
    "build_report": "orchestrator.report",
    "ResultsStore": "orchestrator.results",
    "SpecError": "orchestrator.errors",
    "UsageError": "orchestrator.errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
