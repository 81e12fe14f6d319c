"""One training step, shared by the trainer and the throughput sweep."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch
import torch.nn.functional as F

from rnn.config import TrainConfig
from rnn.data import LMData
from rnn.device import autocast_dtype
from rnn.models import LanguageModel
from rnn.optim import build_optimizer


def lm_loss(model: LanguageModel, window: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy; for bidirectional models the mean of both directions (ELMo)."""
    out = model(window)  # logits: (B, L-1, V)
    loss = F.cross_entropy(out.logits.flatten(0, 1), window[:, 1:].flatten(), label_smoothing=label_smoothing)
    if out.backward_logits is not None:
        # The backward direction predicts the previous token.
        back = F.cross_entropy(
            out.backward_logits.flatten(0, 1), window[:, :-1].flatten(), label_smoothing=label_smoothing
        )
        loss = 0.5 * (loss + back)
    return loss


class TrainStep:
    """One training step: the trainer's, and the one a throughput sweep times.

    Draws ``batch_size`` windows on the device, runs :func:`lm_loss` under the run's
    autocast, scales the loss for fp16, unscales and clips the gradient norm, and steps the
    optimiser it owns. The trainer adds its bookkeeping around it (the lr schedule, a loss
    sum, a finiteness flag); nothing here reads a value back to the host.

    Args:
        model: the model, already on ``device``.
        data: token streams on ``device``.
        train: optimiser, lr, clipping, label smoothing and seed.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (see :func:`rnn.device.resolve_precision`).
        batch_size: windows per step.
    """

    def __init__(
        self, model: LanguageModel, data: LMData, train: TrainConfig, precision: str, batch_size: int
    ) -> None:
        self.model = model
        self.data = data
        self.train = train
        self.batch_size = batch_size
        self.device = data.train.device
        self.optimizer: Optional[torch.optim.Optimizer] = build_optimizer(model, train)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(train.seed)
        dtype = autocast_dtype(precision)
        #: The run's autocast context (reused by evaluation).
        self.autocast = (
            torch.autocast(device_type=self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        )
        self._params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Run one step; returns the detached loss and the gradient norm, both on the device."""
        assert self.optimizer is not None, "TrainStep used after release()"
        window = self.data.sample_batch(self.batch_size, self.generator)  # (B, T+1)
        with self.autocast:
            loss = lm_loss(self.model, window, self.train.label_smoothing)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.train.clip_grad_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.train.clip_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), grad_norm

    def release(self) -> None:
        """Drop the gradients and the optimiser state (after an OOM, or between batch sizes)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.state.clear()
        self.optimizer = None
        for p in self._params:
            p.grad = None
