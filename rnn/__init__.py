"""The training engine: recurrent language models in plain PyTorch (never Ray).

It runs the same in a test, a notebook and a Ray actor::

    from rnn import RunConfig, DataConfig, ModelConfig, TrainConfig, Trainer
    result = Trainer(RunConfig(model=ModelConfig(cell="gru")), "runs/gru").fit()

Config and event types import without torch; the rest is loaded on first use, so that
``python -m orchestrator validate`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from rnn.config import DataConfig, EarlyStopping, ModelConfig, RunConfig, ThroughputConfig, TrainConfig
from rnn.events import EvalRecord, EventKind, TrainEvent, TrainResult, TrialStatus

_LAZY = {
    "Trainer": "rnn.train",
    "build_model": "rnn.models",
    "LanguageModel": "rnn.models",
    "prepare_data": "rnn.data",
    "LMData": "rnn.data",
    "load_corpus": "rnn.corpus",
    "build_tokenizer": "rnn.tokenizer",
    "detect_device": "rnn.device",
    "device_report": "rnn.device",
    "resolve_precision": "rnn.device",
    "generate": "rnn.sample",
    "load_checkpoint": "rnn.checkpoint",
    "measure_throughput": "rnn.throughput",
}

__all__ = [
    "DataConfig",
    "EarlyStopping",
    "ModelConfig",
    "RunConfig",
    "ThroughputConfig",
    "TrainConfig",
    "EvalRecord",
    "EventKind",
    "TrainEvent",
    "TrainResult",
    "TrialStatus",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rnn' has no attribute {name!r}")
