"""Validation: forward-direction loss, accuracy and bits per character over the whole split."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from rnn.data import LMData
from rnn.models import LanguageModel

#: Validation needs no backward pass, so it runs in batches of up to this many logits
#: (256 MB in fp32), never fewer rows than the training batch: small training batches would
#: otherwise make evaluation a long loop of tiny kernels.
EVAL_LOGITS_BUDGET = 2**26
EVAL_MAX_BATCH = 1024


def eval_batch_size(train_batch: int, seq_len: int, vocab_size: int) -> int:
    """Rows per validation batch: as many as the logits budget allows, within [train_batch, 1024]."""
    return max(train_batch, min(EVAL_MAX_BATCH, EVAL_LOGITS_BUDGET // max(1, seq_len * vocab_size)))


@dataclass(frozen=True)
class ValMetrics:
    """Validation figures: ``loss`` in nats per token, ``bpc`` in bits per character; NaN without
    a validation split."""

    loss: float
    accuracy: float
    bpc: float
    perplexity: float


@torch.no_grad()
def evaluate(model: LanguageModel, data: LMData, autocast: Any, rows: int) -> ValMetrics:
    """Forward-direction next-token loss and accuracy over every validation window.

    Leaves the model in eval mode; the caller switches back to training.
    """
    model.eval()
    device = next(model.parameters()).device
    nll = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    for window in data.val_batches(rows):  # (b, T+1)
        with autocast:
            logits = model(window).logits  # (b, T, V); forward direction only
        targets = window[:, 1:]
        nll += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").double()
        correct += (logits.argmax(-1) == targets).sum()
        count += targets.numel()
    if not count:
        nan = float("nan")
        return ValMetrics(nan, nan, nan, nan)
    loss = float(nll.item()) / count
    return ValMetrics(
        loss=loss,
        accuracy=float(correct.item()) / count,
        bpc=loss * data.tokens_per_char_val / math.log(2),
        perplexity=math.exp(min(loss, 700.0)) if math.isfinite(loss) else float("nan"),
    )
