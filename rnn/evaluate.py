"""Validation: forward-direction loss, accuracy and bits per character over the whole split.

``data.val_mode: windows`` scores the split's fixed windows (:meth:`rnn.data.LMData.val_batches`),
each from a zero state: a token early in a window is predicted from little context. ``stream``
reads the split as :data:`VAL_STREAMS` contiguous streams (:func:`rnn.streams.stream_windows`),
the state carried from window to window, so every token but a stream's first few has all the text
before it in its stream as context: the figure recurrent language models are reported by
(AWD-LSTM, char-rnn), lower than the windows' figure for the same weights. Both predict every
validation token after the first exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from rnn.config import ValMode
from rnn.data import LMData
from rnn.models import LanguageModel
from rnn.state import RecurrentState, map_state
from rnn.streams import stream_windows

#: Validation needs no backward pass, so it runs in batches of up to this many logits
#: (256 MB in fp32), never fewer rows than the training batch: small training batches would
#: otherwise make evaluation a long loop of tiny kernels.
EVAL_LOGITS_BUDGET = 2**26
EVAL_MAX_BATCH = 1024
#: ``val_mode: stream``: the streams the split is read as, whatever the training batch, so that
#: trials of a sweep over batch_size are scored alike. Each starts from a zero state; on Tiny
#: Shakespeare's split (111,539 targets) a stream is 3,485 characters long.
VAL_STREAMS = 32


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
def evaluate(model: LanguageModel, data: LMData, autocast: Any, rows: int, mode: ValMode = "windows") -> ValMetrics:
    """Forward-direction next-token loss and accuracy over every validation token, in ``mode``
    (``data.val_mode``; ``rows``: windows per batch in ``windows`` mode).

    Leaves the model in eval mode; the caller switches back to training.
    """
    model.eval()
    device = next(model.parameters()).device
    nll = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    count = 0
    stream = mode == "stream"
    batches = (stream_windows(data.val, VAL_STREAMS, data.seq_len) if stream
               else ((w, None) for w in data.val_batches(rows)))
    state: Optional[RecurrentState] = None
    for window, carry in batches:  # (b, T+1)
        if carry is not None and state is not None:
            state = _row(state, carry)
        with autocast:
            out = model(window, backward=False, state=state)  # forward direction only
        logits = out.logits  # (b, T, V)
        if stream:
            state = out.state
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
        bpc=data.val_bpc(loss),
        perplexity=math.exp(min(loss, 700.0)) if math.isfinite(loss) else float("nan"),
    )


def _row(state: RecurrentState, row: int) -> RecurrentState:
    """One row of a stack's state, kept ``[layers, 1, H]``."""
    return map_state(state, lambda t: t[:, row : row + 1])
