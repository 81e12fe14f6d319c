"""Optimisers and learning-rate schedules, built from a :class:`~rnn.config.TrainConfig`."""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from rnn.config import TrainConfig

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("onecycle", "cosine", "plateau", "step", "constant")

#: Plateau: multiply the lr by this factor when validation stops improving.
PLATEAU_FACTOR = 0.5
#: Step: multiply the lr by STEP_GAMMA at these fractions of the run.
STEP_MILESTONES = (0.5, 0.75)
STEP_GAMMA = 0.1
#: Runs shorter than this keep a constant lr under ``onecycle``.
MIN_ONECYCLE_STEPS = 4
#: ``schedule_by: time``: the schedule is built over this many ticks, each 1/SCHEDULE_TICKS of
#: ``max_time_s``, and stepped to the tick the training time has reached.
SCHEDULE_TICKS = 10_000


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay applies to matrices only; biases, LayerNorm gains and 1-D params are exempt."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: Optional[int], plateau_patience: int
) -> Any:
    """The schedule for ``cfg.scheduler`` (an ``LRScheduler``, or ``ReduceLROnPlateau``, whose
    ``step`` takes the metric); ``None`` for ``constant``.

    ``onecycle``, ``cosine`` and ``step`` are stepped once per training step and need a step budget
    (``max_steps`` or ``max_epochs``). ``plateau`` is stepped at each evaluation with the
    validation loss.
    """
    name = cfg.scheduler
    if name == "constant":
        return None
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=PLATEAU_FACTOR, patience=plateau_patience
        )
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; expected one of {', '.join(SCHEDULERS)}")
    if not total_steps:
        raise ValueError(f"scheduler {name!r} needs a step budget: set train.max_steps or train.max_epochs")
    if name == "onecycle":
        if total_steps < MIN_ONECYCLE_STEPS:
            return None  # too short to warm up and anneal: constant lr
        # OneCycleLR divides by the length of each phase: the warm-up needs at least two steps.
        pct = min(max(cfg.warmup_fraction, 2.0 / total_steps), 0.5)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=pct
        )
    if name == "cosine":
        warmup, floor = int(cfg.warmup_fraction * total_steps), cfg.min_lr_fraction

        def cosine(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    milestones = [max(1, int(f * total_steps)) for f in STEP_MILESTONES]
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=STEP_GAMMA)
