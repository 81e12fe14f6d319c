"""One training step, shared by the trainer and the throughput sweep."""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple, Optional, cast

import torch
import torch.nn.functional as F

from rnn.config import TrainConfig
from rnn.data import LMData
from rnn.device import autocast_dtype
from rnn.models import LanguageModel
from rnn.optim import build_optimizer
from rnn.state import RecurrentState, map_state
from rnn.streams import TrainStreams


class StepLosses(NamedTuple):
    """What one step measures, both on the device (0-dim), and the state it ends in."""

    objective: torch.Tensor  # what is minimised: label smoothing, both directions when bidirectional
    nll: torch.Tensor  # the forward direction's unsmoothed cross-entropy, nats/token: val_loss's quantity
    #: The forward stack's state after the window (in the graph), which a stateful run carries on.
    state: Optional[RecurrentState] = None


def lm_losses(model: LanguageModel, window: torch.Tensor, label_smoothing: float = 0.0,
              state: Optional[RecurrentState] = None) -> StepLosses:
    """The training objective and the forward unsmoothed next-token loss, from one forward pass
    starting from ``state`` (None: zero).

    The objective is next-token cross-entropy with ``label_smoothing``; for bidirectional models
    the mean of both directions (ELMo). ``nll`` is the quantity validation reports, so that
    ``train_loss - val_loss`` measures overfitting and nothing else.
    """
    out = model(window, state=state)  # logits: (B, L-1, V)
    logp = F.log_softmax(out.logits.float(), dim=-1).flatten(0, 1)  # (B*(L-1), V)
    nll = F.nll_loss(logp, window[:, 1:].flatten())
    # label_smoothing=eps is (1 - eps) * nll + eps * mean over classes of -log p (as in F.cross_entropy).
    objective = nll if not label_smoothing else (1 - label_smoothing) * nll - label_smoothing * logp.mean()
    if out.backward_logits is not None:
        # The backward direction predicts the previous token.
        back = F.cross_entropy(
            out.backward_logits.float().flatten(0, 1), window[:, :-1].flatten(), label_smoothing=label_smoothing
        )
        objective = 0.5 * (objective + back)
    return StepLosses(objective, nll.detach(), out.state)


def lm_loss(model: LanguageModel, window: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The training objective alone (see :func:`lm_losses`)."""
    return lm_losses(model, window, label_smoothing).objective


class TrainStep:
    """One training step: the trainer's, and the one a throughput sweep times.

    Draws ``batch_size`` windows on the device (with ``train.stateful``, the next window of
    ``batch_size`` contiguous streams, started from the state the last step ended in:
    :class:`rnn.streams.TrainStreams`), runs :func:`lm_losses` under the run's autocast, scales
    the loss for fp16, unscales and clips the gradient norm, and steps the optimiser it owns. The
    trainer adds its bookkeeping around it (the lr schedule, loss sums, a finiteness flag).

    In fp32 and bf16 nothing here reads a value back to the host. In fp16 the GradScaler does,
    every step: ``GradScaler.step`` reads whether any unscaled gradient is non-finite to decide
    whether to step the optimiser, so an fp16 step waits for its backward pass. Just before it,
    this step reads whether the (unscaled) gradient norm is finite, at the same point of the
    stream, to set :attr:`skipped`: the trainer then leaves the lr schedule where it is.

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
        #: What the forward pass runs: ``model``, or its ``torch.compile`` wrapper (see
        #: :mod:`rnn.compile`); both share ``model``'s parameters.
        self.forward_model: torch.nn.Module = model
        #: True when ``forward_model`` runs CUDA graphs (``reduce-overhead``): each step then
        #: tells the CUDA-graph trees that a new iteration begins, so this step's graphs may
        #: reuse the memory of the last step's outputs (which the caller has consumed by then).
        self.cudagraph_steps = False
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
        #: True when the last call's optimiser step was skipped by the fp16 GradScaler
        #: (non-finite gradients); always False in fp32 and bf16.
        self.skipped = False
        if train.stateful and model.bidirectional:
            raise ValueError("train.stateful: a bidirectional model's backward stack reads each window from its end; "
                             "no state carries on to the next window")
        #: train.stateful: the streams the windows come from, and the state the last step ended in
        #: (detached; None until the first step).
        self.streams = TrainStreams(data.train, batch_size, data.seq_len) if train.stateful else None
        self.state: Optional[RecurrentState] = None

    def next_batch(self) -> tuple[torch.Tensor, Optional[RecurrentState]]:
        """The next training window ``(B, T+1)`` and the state it starts from: None (zero) unless
        the run is stateful and the window continues the last step's streams."""
        if self.streams is None:
            return self.data.sample_batch(self.batch_size, self.generator), None
        window, fresh = self.streams.next(self.generator)
        return window, None if fresh else self.state

    def __call__(self) -> tuple[StepLosses, torch.Tensor]:
        """Run one step; returns the detached losses and the gradient norm, all on the device."""
        assert self.optimizer is not None, "TrainStep used after release()"
        if self.cudagraph_steps:
            torch.compiler.cudagraph_mark_step_begin()
        window, state = self.next_batch()  # (B, T+1)
        with self.autocast:
            losses = lm_losses(cast(LanguageModel, self.forward_model), window, self.train.label_smoothing, state)
        if self.streams is not None:
            self.state = carried(losses.state)
        self.scaler.scale(losses.objective).backward()
        self.scaler.unscale_(self.optimizer)
        if self.train.clip_grad_norm:
            grad_norm = torch.nn.utils.clip_grad_norm_(self._params, self.train.clip_grad_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        if self.scaler.is_enabled():
            # The scaler skips the optimiser step exactly when an unscaled gradient is inf/NaN,
            # which makes their norm non-finite. (A norm that overflows from finite gradients,
            # above 1e19 per element, would be counted as skipped too.)
            self.skipped = not bool(torch.isfinite(grad_norm))
        self.scaler.step(self.optimizer)  # fp16: a host read (were the gradients finite?)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepLosses(losses.objective.detach(), losses.nll), grad_norm

    def release(self) -> None:
        """Drop the gradients and the optimiser state (after an OOM, or between batch sizes)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.state.clear()
        self.optimizer = None
        for p in self._params:
            p.grad = None


def carried(state: Optional[RecurrentState]) -> Optional[RecurrentState]:
    """A step's final state as the next step's start: cut from the graph (truncated BPTT) and
    copied (a CUDA graph reuses the memory of its outputs), in the dtype the stack made it."""
    return None if state is None else map_state(state, lambda t: t.detach().clone())
