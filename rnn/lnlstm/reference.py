"""The layer-norm LSTM recurrence as a plain PyTorch loop, differentiated by autograd.

Every fused path (:mod:`rnn.lnlstm.fused`) computes this function of the same parameters; it is
the ``torch`` path, and what the fused kernels are checked against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LSTMState = tuple[Tensor, Tensor]


def ln_lstm_recurrence_reference(
    xg: Tensor,
    h0: Tensor,
    c0: Tensor,
    w_hh: Tensor,
    ln_h_weight: Tensor,
    ln_h_bias: Tensor,
    bias: Tensor,
    ln_c_weight: Tensor,
    ln_c_bias: Tensor,
    eps: float,
) -> tuple[Tensor, LSTMState]:
    """The PyTorch loop: one layer-norm LSTM layer over time, given its normalised input projection.

    Args:
        xg: ``[B, T, 4H]``, ``LN_x(W_x x)`` for every timestep (no ``b`` yet).
        h0, c0: ``[B, H]`` initial state.
        w_hh: ``[4H, H]`` recurrent weight ``W_h``.
        ln_h_weight, ln_h_bias: ``[4H]`` affine of ``LN_h``.
        bias: ``[4H]`` post-normalisation gate bias ``b``.
        ln_c_weight, ln_c_bias: ``[H]`` affine of ``LN_c``.
        eps: LayerNorm epsilon.

    Returns:
        ``(outputs [B, T, H], (h_T [B, H], c_T [B, H]))``.
    """
    hidden = h0.shape[-1]
    # b is added after LN_x, and LN_h comes later, so folding b into xg here (one batched add
    # instead of T small ones) keeps it post-normalisation.
    xgb = xg + bias  # [B, T, 4H]
    h, c = h0, c0
    outputs: list[Tensor] = []
    # unbind(1) gives T views at once. Indexing xg[:, t] in the loop would make autograd
    # accumulate a full-size [B, T, 4H] gradient per step: backward quadratic in T.
    for xg_t in xgb.unbind(1):  # xg_t: [B, 4H]
        hg = F.layer_norm(F.linear(h, w_hh), (4 * hidden,), ln_h_weight, ln_h_bias, eps)
        i, f, g, o = (xg_t + hg).chunk(4, dim=1)  # each [B, H]
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(F.layer_norm(c, (hidden,), ln_c_weight, ln_c_bias, eps))
        outputs.append(h)
    return torch.stack(outputs, dim=1), (h, c)  # [B, T, H]
