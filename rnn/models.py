"""Recurrent language models: embedding -> dropout -> recurrent stack -> dropout -> linear head.

Cells are ``lstm``, ``gru`` and ``rnn`` (tanh), as fused cuDNN/oneDNN modules, the layer-norm
LSTM from :mod:`rnn.lnlstm`, or ``mingru``/``minlstm`` (Feng et al. 2024), a parallel scan in
training and evaluation and step by step in :meth:`LanguageModel.step` (:mod:`rnn.minstack`).
Regularisation (``weight_drop``, ``dropout_mode``, ``embedding_dropout``) is :mod:`rnn.regularize`.
A bidirectional model is ELMo-style: two separate unidirectional
stacks, the backward one reading the sequence reversed, sharing the embedding and the head.
(A stacked ``nn.LSTM(bidirectional=True)`` would feed layer 1's backward states, which have
read the future, into layer 2's forward direction.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

from rnn.config import CELLS, DROPOUT_MODES, MIN_CELLS, ModelConfig
from rnn.device import autocast_dtype
from rnn.lnlstm import LayerNormLSTM, LNLSTMPath
from rnn.minstack import MinStack
from rnn.regularize import embedding_dropout, fused_rnn_forward, sequence_dropout
from rnn.state import RecurrentState

logger = logging.getLogger(__name__)

_FUSED: dict[str, Callable[..., nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class LMOutput(NamedTuple):
    """What :meth:`LanguageModel.forward` returns for a window ``[B, L]``.

    ``logits``: ``[B, L-1, V]``, the forward direction's prediction of ``window[:, 1:]``;
    position t has read ``window[:, :t+1]`` only.
    ``backward_logits``: ``[B, L-1, V]``, the backward direction's prediction of
    ``window[:, :-1]`` (position t has read ``window[:, t+1:]`` only), or None when the model
    is unidirectional.
    ``state``: the forward stack's state after the window's last input (``window[:, -2]``), which
    the next window of the same stream continues from (truncated BPTT, ``train.stateful``).
    """

    logits: Tensor
    backward_logits: Optional[Tensor] = None
    state: Optional[RecurrentState] = None


def _validate(cfg: ModelConfig, vocab_size: int) -> None:
    """Refuse configs the engine cannot build; every message names the field and the fix."""
    if cfg.cell not in CELLS:
        raise ValueError(
            f"model.cell: unknown cell {cfg.cell!r}; expected one of {', '.join(CELLS)}"
        )
    if cfg.layer_norm and cfg.cell != "lstm":
        raise ValueError(
            f"model.layer_norm: the layer-norm cell exists only for cell 'lstm' (got cell "
            f"{cfg.cell!r}); set layer_norm: false or cell: lstm"
        )
    if cfg.tie_weights and cfg.embedding_dim != cfg.hidden_size:
        raise ValueError(
            f"model.tie_weights: tied weights need embedding_dim == hidden_size (got "
            f"embedding_dim={cfg.embedding_dim}, hidden_size={cfg.hidden_size}); make them "
            "equal or set tie_weights: false"
        )
    for name in ("embedding_dim", "hidden_size", "num_layers"):
        value = getattr(cfg, name)
        if value < 1:
            raise ValueError(f"model.{name}: must be >= 1 (got {value})")
    for name in ("dropout", "weight_drop", "embedding_dropout"):
        value = getattr(cfg, name)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"model.{name}: must be in [0, 1) (got {value})")
    if cfg.dropout_mode not in DROPOUT_MODES:
        raise ValueError(
            f"model.dropout_mode: unknown mode {cfg.dropout_mode!r}; expected one of {', '.join(DROPOUT_MODES)}"
        )
    if cfg.min_mlp and cfg.cell not in MIN_CELLS:
        raise ValueError(
            f"model.min_mlp: the MLP block is part of the min cells' layers only (got cell {cfg.cell!r}); set "
            "min_mlp: false or cell: mingru or minlstm"
        )
    if cfg.weight_drop > 0.0 and cfg.cell in MIN_CELLS:
        raise ValueError(
            f"model.weight_drop: cell {cfg.cell!r} has no hidden-to-hidden weights to drop (its gates read the "
            f"input only; got weight_drop={cfg.weight_drop}); set weight_drop: 0 or use lstm, gru or rnn"
        )
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1 (got {vocab_size}); is the tokenizer empty?")


def _init_fused(rnn: nn.RNNBase, cell: str) -> None:
    """Xavier-uniform weights, zero biases; for LSTMs the forget gate's bias sums to 1.

    PyTorch's LSTM adds ``bias_ih + bias_hh``; the forget slice (gate order i, f, g, o) is set
    to 1 in ``bias_ih`` and 0 in ``bias_hh``, so the effective forget bias is 1 (Jozefowicz et
    al. 2015), which keeps the cell state (and its gradient) flowing early in training.
    """
    hidden = rnn.hidden_size
    for name, param in rnn.named_parameters():
        if name.startswith(("weight_ih", "weight_hh")):
            nn.init.xavier_uniform_(param)
        elif name.startswith(("bias_ih", "bias_hh")):
            nn.init.zeros_(param)
            if cell == "lstm" and name.startswith("bias_ih"):
                with torch.no_grad():
                    param[hidden : 2 * hidden] = 1.0


def _make_stack(cfg: ModelConfig, path: Optional[LNLSTMPath]) -> nn.Module:
    """One unidirectional recurrent stack, ``batch_first``, returning ``(output, state)``."""
    locked = cfg.dropout_mode == "locked"
    if cfg.cell in MIN_CELLS:
        return MinStack(cfg.cell, cfg.embedding_dim, cfg.hidden_size, cfg.num_layers, cfg.dropout, locked,
                        mlp=cfg.min_mlp)
    if cfg.layer_norm:
        return LayerNormLSTM(cfg.embedding_dim, cfg.hidden_size, cfg.num_layers, _between(cfg), path=path,
                             weight_drop=cfg.weight_drop, locked=locked)
    kwargs = {"nonlinearity": "tanh"} if cfg.cell == "rnn" else {}
    rnn = _FUSED[cfg.cell](
        cfg.embedding_dim,
        cfg.hidden_size,
        num_layers=cfg.num_layers,
        batch_first=True,
        dropout=_between(cfg),
        **kwargs,
    )
    _init_fused(rnn, cfg.cell)
    return rnn


def _between(cfg: ModelConfig) -> float:
    # Dropout between stacked layers; with one layer PyTorch would warn that it does nothing.
    return cfg.dropout if cfg.num_layers > 1 else 0.0


class LanguageModel(nn.Module):
    """A recurrent language model over token ids.

    :func:`build_model` is the usual entry point; the constructor validates ``cfg`` either way.
    ``cfg`` and ``vocab_size`` are kept as attributes so a checkpoint can store what rebuilds
    the model. Embedding and (untied) head weights start at N(0, 0.02), the head bias at 0, so
    the initial loss is close to ln(vocab_size). ``path``: what a layer-norm LSTM's layers may run
    (:class:`rnn.lnlstm.LNLSTMPath`; default from the environment); it changes no parameter.
    """

    def __init__(self, cfg: ModelConfig, vocab_size: int, path: Optional[LNLSTMPath] = None) -> None:
        super().__init__()
        _validate(cfg, vocab_size)
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, cfg.embedding_dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.locked = cfg.dropout_mode == "locked"
        self.forward_rnn = _make_stack(cfg, path)
        self.backward_rnn = _make_stack(cfg, path) if cfg.bidirectional else None
        self.head = nn.Linear(cfg.hidden_size, vocab_size)

        nn.init.normal_(self.embedding.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.head.bias)
        if cfg.tie_weights:
            # One Parameter in two modules (Press & Wolf 2017); parameters() yields it once.
            self.head.weight = self.embedding.weight
        else:
            nn.init.normal_(self.head.weight, mean=0.0, std=0.02)

    @property
    def bidirectional(self) -> bool:
        return self.backward_rnn is not None

    def _embed(self, tokens: Tensor) -> Tensor:
        """Embedding (``embedding_dropout``), then dropout: ``[B, T] -> [B, T, E]``."""
        p = self.cfg.embedding_dropout
        emb = embedding_dropout(self.embedding, tokens, p, self.training) if p else self.embedding(tokens)
        return self._dropout(emb)

    def _dropout(self, x: Tensor) -> Tensor:
        """``model.dropout`` on ``x`` ``[B, T, C]`` in ``model.dropout_mode``."""
        return sequence_dropout(x, self.cfg.dropout, self.training, locked=True) if self.locked else self.drop(x)

    def _run(self, stack: nn.Module, x: Tensor, state: Optional[RecurrentState] = None,
             sequential: bool = False) -> tuple[Tensor, RecurrentState]:
        """One stack over ``x`` ``[B, T, E]``: ``(out [B, T, H], state)``. ``nn.LSTM``/``nn.GRU``/``nn.RNN``
        with weight drop or locked dropout between layers go through the fused op with their weights
        passed in (:func:`rnn.regularize.fused_rnn_forward`); ``sequential``: a min stack's
        step-by-step form."""
        if isinstance(stack, MinStack):
            return stack(x, state, "sequential" if sequential else None)
        if isinstance(stack, nn.RNNBase) and stack.training and (self.cfg.weight_drop > 0.0 or self.locked):
            return fused_rnn_forward(stack, x, state, weight_drop=self.cfg.weight_drop, locked=self.locked)
        out, state = stack(x, state)
        return out, state

    def forward(self, window: Tensor, backward: bool = True, state: Optional[RecurrentState] = None) -> LMOutput:
        """Logits for a window ``[B, L]`` of token ids (``L >= 2``); see :class:`LMOutput`.

        ``backward=False`` skips a bidirectional model's backward stack and head (evaluation
        scores the forward direction only); ``backward_logits`` is then None. ``state``: where the
        forward stack starts (None: zero), the ``state`` of the window before in the same stream.
        """
        if window.dim() != 2 or window.shape[1] < 2:
            raise ValueError(
                f"window must be [batch, length >= 2] token ids (got {tuple(window.shape)})"
            )
        emb = self._embed(window)  # [B, L, E]

        out, last = self._run(self.forward_rnn, emb[:, :-1], state)  # [B, L-1, H]; step t has read window[:, :t+1]
        logits = self.head(self._dropout(out))  # [B, L-1, V]

        backward_logits = None
        if self.backward_rnn is not None and backward:
            # Reversed, the backward stack reads window[:, L-1], window[:, L-2], ...; after
            # flipping back, position t has read window[:, t+1:] and predicts window[:, t].
            rev, _ = self._run(self.backward_rnn, emb[:, 1:].flip(1))  # [B, L-1, H], reversed time
            backward_logits = self.head(self._dropout(rev.flip(1)))  # [B, L-1, V]
        return LMOutput(logits, backward_logits, last)

    def step(
        self, tokens: Tensor, state: Optional[RecurrentState] = None
    ) -> tuple[Tensor, RecurrentState]:
        """Run the forward direction over ``tokens`` ``[B, T]`` from ``state``, for sampling.

        Returns ``(logits [B, T, V], state)``, where ``logits[:, t]`` predicts the token after
        ``tokens[:, t]`` and ``state`` continues the sequence on the next call. A min cell runs its
        sequential form here (one step at a time), the parallel scan in :meth:`forward`.
        """
        emb = self._embed(tokens)  # [B, T, E]
        out, state = self._run(self.forward_rnn, emb, state, sequential=True)  # [B, T, H]
        return self.head(self._dropout(out)), state  # [B, T, V]

    def recurrence_path(self, device: torch.device, precision: str = "fp32") -> Optional[str]:
        """Which recurrence a layer-norm model runs on ``device`` at ``precision``:
        ``fused-cpu``, ``triton`` or ``torch`` (see :mod:`rnn.lnlstm.path`); ``parallel-scan`` or
        ``sequential-scan`` for ``mingru``/``minlstm`` (see :mod:`rnn.mincells`); None for the
        ``nn.LSTM``/``nn.GRU``/``nn.RNN`` cells, which run cuDNN or oneDNN."""
        if isinstance(self.forward_rnn, MinStack):
            return self.forward_rnn.scan_path(device)
        if not isinstance(self.forward_rnn, LayerNormLSTM):
            return None
        dtype = autocast_dtype(precision) or torch.float32
        if dtype != torch.float32 and device.type == "cpu":
            return "torch"  # CPU autocast: the kernels take float32/float64 only
        return self.forward_rnn.recurrence_path(device, dtype)

    def num_parameters(self) -> int:
        """Trainable parameter count; a tied embedding/head weight counts once."""
        return sum(p.numel() for p in self.parameters())


def build_model(cfg: ModelConfig, vocab_size: int, path: Optional[LNLSTMPath] = None) -> LanguageModel:
    """Build a :class:`LanguageModel` from ``cfg`` for a vocabulary of ``vocab_size`` tokens
    (``path``: see :class:`LanguageModel`).

    Raises:
        ValueError: unknown ``cell`` (the message lists the valid ones); ``layer_norm`` with a
            cell other than ``lstm``; ``tie_weights`` with ``embedding_dim != hidden_size``;
            non-positive sizes, a dropout rate outside [0, 1), an unknown ``dropout_mode``, or
            ``weight_drop`` on a min cell (it has no recurrent weights).
    """
    model = LanguageModel(cfg, vocab_size, path)
    logger.debug(
        "built %s%s%s model: %d parameters",
        "bidirectional " if cfg.bidirectional else "",
        "layer-norm " if cfg.layer_norm else "",
        cfg.cell,
        model.num_parameters(),
    )
    return model
