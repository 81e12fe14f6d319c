"""AWD-LSTM's regularisation (Merity, Keskar & Socher 2017), as functions of tensors.

- :func:`sequence_dropout`: ``model.dropout`` in either ``model.dropout_mode``: ``standard`` (a fresh
  mask per element, :func:`torch.nn.functional.dropout`) or ``locked`` (variational dropout, Gal &
  Ghahramani 2016: one mask per sequence and feature, the same at every time step).
- :func:`embedding_dropout`: ``model.embedding_dropout``, whole rows (tokens) of the embedding
  matrix dropped and the rest rescaled, so every occurrence of a dropped token in a window is zero.
- :func:`drop_connect`: ``model.weight_drop``, DropConnect (Wan et al. 2013) on a recurrent weight
  matrix: a masked copy of the weight, made once per forward pass, that autograd differentiates
  back to the parameter. The kernels that run the recurrence see an ordinary weight tensor.
- :func:`fused_rnn_forward`: ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with dropped recurrent weights or
  locked dropout between layers, still on the fused oneDNN/cuDNN op: the module's weights are
  passed to ``torch.lstm``/``torch.gru``/``torch.rnn_tanh`` (what the module's own forward calls), a
  layer at a time where a locked mask goes between layers. No Python loop over time.

Each is the identity outside training (or at p = 0) and draws no random numbers then, so a model
with these at their defaults computes, and consumes the RNG, exactly as before they existed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnn.state import RecurrentState, map_state


def sequence_dropout(x: Tensor, p: float, training: bool, locked: bool) -> Tensor:
    """Dropout on ``x`` ``[B, T, C]``: a new mask per element, or with ``locked`` one mask per
    sequence (``[B, 1, C]``, broadcast over time). Survivors are scaled by ``1 / (1 - p)``."""
    if not training or p == 0.0:
        return x
    if not locked:
        return F.dropout(x, p, training=True)
    mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p).div_(1.0 - p)  # [B, 1, C]
    return x * mask


def embedding_dropout(embedding: nn.Embedding, tokens: Tensor, p: float, training: bool) -> Tensor:
    """``embedding(tokens)`` with whole rows of the weight dropped (``p``) and the rest scaled by
    ``1 / (1 - p)``, in training; ``[B, T] -> [B, T, E]``. The mask is drawn over the vocabulary,
    once per call, so a dropped token is dropped at every position it occurs."""
    if not training or p == 0.0:
        return embedding(tokens)
    weight = embedding.weight  # [V, E]
    mask = weight.new_empty(weight.shape[0], 1).bernoulli_(1.0 - p).div_(1.0 - p)  # [V, 1]
    return F.embedding(tokens, weight * mask, embedding.padding_idx, embedding.max_norm, embedding.norm_type,
                       embedding.scale_grad_by_freq, embedding.sparse)


def drop_connect(weight: Tensor, p: float, training: bool) -> Tensor:
    """``weight`` with each element dropped (``p``) and the rest scaled by ``1 / (1 - p)``, in
    training (AWD-LSTM's WeightDrop); ``weight`` itself otherwise. Gradients reach the parameter
    through the mask.

    The mask is ``rand >= p`` rather than :func:`torch.nn.functional.dropout`: on the CPU, dropout's
    Bernoulli draw took 14 ms for a 2048 x 512 weight on one thread, this 6 ms with the backward.
    """
    if not training or p == 0.0:
        return weight
    mask = torch.rand_like(weight).ge_(p).mul_(1.0 / (1.0 - p))  # 0 or 1 / (1 - p)
    return weight * mask


#: The fused ops ``nn.GRU``/``nn.RNN`` call, by the module's ``mode`` (``torch.lstm`` also returns ``c``).
_FUNCTIONS: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "GRU": torch.gru, "RNN_TANH": torch.rnn_tanh, "RNN_RELU": torch.rnn_relu}


def _layer_weights(rnn: nn.RNNBase, layer: int, weight_drop: float, training: bool) -> list[Tensor]:
    """Layer ``layer``'s ``[weight_ih, weight_hh, bias_ih, bias_hh]``, ``weight_hh`` dropped."""
    names = [f"{kind}_l{layer}" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    weights = [getattr(rnn, name) for name in names]
    weights[1] = drop_connect(weights[1], weight_drop, training)
    return weights


def _layer_state(state: RecurrentState, k: int) -> RecurrentState:
    """Layer ``k``'s part of a stack's state, kept ``[1, B, H]``."""
    return map_state(state, lambda t: t[k : k + 1])


def _run(rnn: nn.RNNBase, x: Tensor, hx: RecurrentState, weights: list[Tensor], layers: int,
         dropout: float, training: bool) -> tuple[Tensor, RecurrentState]:
    """One call of the fused op over ``layers`` layers with ``weights`` (4 per layer)."""
    if rnn.mode == "LSTM":
        h0, c0 = hx
        out, h, c = torch.lstm(x, (h0, c0), weights, True, layers, dropout, training, False, True)
        return out, (h, c)
    assert isinstance(hx, Tensor)
    return _FUNCTIONS[rnn.mode](x, hx, weights, True, layers, dropout, training, False, True)


def fused_rnn_forward(
    rnn: nn.RNNBase, x: Tensor, state: Optional[RecurrentState], *, weight_drop: float, locked: bool,
) -> tuple[Tensor, RecurrentState]:
    """``rnn(x, state)`` for a unidirectional ``batch_first`` ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with
    biases, with each layer's ``weight_hh`` dropped (:func:`drop_connect`, in training) and, with
    ``locked``, the between-layer dropout (``rnn.dropout``) locked over time.

    ``x``: ``[B, T, C]``; returns ``(output [B, T, H], state)`` as the module does. Standard dropout
    runs all layers in one call of the fused op; locked dropout one call per layer, the mask
    applied between them.
    """
    if rnn.bidirectional or not rnn.batch_first or not rnn.bias or rnn.proj_size:
        raise ValueError("fused_rnn_forward takes a unidirectional batch_first RNN with biases and no projection")
    layers, batch = rnn.num_layers, x.shape[0]
    training = rnn.training
    if state is None:
        zeros = x.new_zeros(layers, batch, rnn.hidden_size)
        state = (zeros, zeros) if rnn.mode == "LSTM" else zeros
    weights = [w for k in range(layers) for w in _layer_weights(rnn, k, weight_drop, training)]
    between = rnn.dropout if layers > 1 else 0.0
    if not locked or between == 0.0 or not training:
        return _run(rnn, x, state, weights, layers, between, training)
    out = x
    hs: list[Tensor] = []
    cs: list[Tensor] = []
    for k in range(layers):
        if k > 0:
            out = sequence_dropout(out, between, training, locked=True)
        hx = _layer_state(state, k)
        out, final = _run(rnn, out, hx, weights[4 * k : 4 * k + 4], 1, 0.0, training)
        if isinstance(final, tuple):
            hs.append(final[0])
            cs.append(final[1])
        else:
            hs.append(final)
    return out, ((torch.cat(hs), torch.cat(cs)) if cs else torch.cat(hs))
