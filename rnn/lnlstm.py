"""Layer-normalised LSTM (Ba, Kiros & Hinton 2016, "Layer Normalization", section 3.1 / eq. 20-22).

Per layer and timestep::

    gates = LN_x(W_x x_t) + LN_h(W_h h_{t-1}) + b            # [B, 4H], gate order (i, f, g, o)
    c_t   = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t   = sigmoid(o) * tanh(LN_c(c_t))

Choices, and why:

- ``LN_x`` and ``LN_h`` each normalise all 4H gate pre-activations together, as in Ba et al.
  (some implementations normalise each gate separately; that adds 3x the LayerNorm calls per
  step for no reported gain). Every LayerNorm keeps its learnable gain and bias.
- The bias ``b`` (with the forget-gate slice at 1) is added *after* the normalisation. A bias
  inside ``W_x``/``W_h`` would be cancelled by LayerNorm's mean subtraction, which is how the
  seed project lost its forget-gate bias. So ``W_x`` and ``W_h`` have no bias.
- ``W_x x`` and ``LN_x`` run for all timesteps in one batched op; only the recurrence loops,
  and it lives in :func:`ln_lstm_recurrence`, which picks a fused path where one is available
  (:mod:`rnn.lnlstm_fused`: C++ on the CPU, Triton on CUDA) and otherwise runs the PyTorch loop
  :func:`ln_lstm_recurrence_reference`. Every path computes the same function of the same
  parameters.
"""

from __future__ import annotations

from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnn import onednn
from rnn.lnlstm_fused import RECURRENCE_CHOICES, RecurrencePath, fused_recurrence, recurrence_path
from rnn.loop_graphs import LoopGraphs

LSTMState = tuple[Tensor, Tensor]


def ln_lstm_recurrence(
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
    recurrence: str = "auto",
    graphs: Optional[LoopGraphs] = None,
) -> tuple[Tensor, LSTMState]:
    """Run one layer-norm LSTM layer over time, given its already-normalised input projection.

    ``recurrence``: ``auto`` (the fused path for these tensors, see
    :func:`rnn.lnlstm_fused.recurrence_path`) or ``torch`` (always the PyTorch loop). ``graphs``:
    the layer's CUDA graphs of its Triton loops (:mod:`rnn.loop_graphs`), or None for none. The
    other arguments and the result are those of :func:`ln_lstm_recurrence_reference`.
    """
    path = recurrence_path(xg.device, xg.dtype, recurrence, hidden_size=h0.shape[-1])
    if path == "torch":
        return ln_lstm_recurrence_reference(
            xg, h0, c0, w_hh, ln_h_weight, ln_h_bias, bias, ln_c_weight, ln_c_bias, eps)
    # b and LN_h's bias are both added to every step's pre-activations after normalisation, so
    # the kernels take their sum (one [4H] add, not a pass over [B, T, 4H]); both get its gradient.
    return fused_recurrence(
        path, xg, h0, c0, w_hh, ln_h_weight, ln_h_bias + bias, ln_c_weight, ln_c_bias, eps, graphs)


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


class LayerNormLSTMLayer(nn.Module):
    """One layer of :class:`LayerNormLSTM`: parameters plus the batched input projection."""

    def __init__(self, input_size: int, hidden_size: int, eps: float = 1e-5, recurrence: str = "auto") -> None:
        super().__init__()
        if recurrence not in RECURRENCE_CHOICES:
            raise ValueError(f"recurrence must be one of {', '.join(RECURRENCE_CHOICES)} (got {recurrence!r})")
        self.recurrence = recurrence
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.eps = eps
        gates = 4 * hidden_size
        self.w_x = nn.Linear(input_size, gates, bias=False)  # W_x; LN_x's beta and b are its bias
        self.w_h = nn.Linear(hidden_size, gates, bias=False)  # W_h
        self.ln_x = nn.LayerNorm(gates, eps=eps)
        self.ln_h = nn.LayerNorm(gates, eps=eps)
        self.ln_c = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.empty(gates))  # b, added after normalisation
        # CUDA graphs of the Triton loops (no parameters, no state dict entry; see rnn.loop_graphs).
        self.loop_graphs = LoopGraphs()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform ``W_x``/``W_h``; LayerNorm gain 1, bias 0; ``b`` 1 on the forget gate."""
        nn.init.xavier_uniform_(self.w_x.weight)
        nn.init.xavier_uniform_(self.w_h.weight)
        for ln in (self.ln_x, self.ln_h, self.ln_c):
            ln.reset_parameters()
        with torch.no_grad():
            self.bias.zero_()
            self.bias[self.hidden_size : 2 * self.hidden_size] = 1.0  # (i, f, g, o): f

    def forward(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """``x``: ``[B, T, C]``; ``state``: ``(h0, c0)`` each ``[B, H]``."""
        # [B, T, 4H]: one matmul and one LayerNorm for all steps. On the fused CPU path the matmul
        # runs on oneDNN or MKL, whichever this machine runs faster (rnn.onednn); the torch path
        # stays plain.
        if recurrence_path(x.device, x.dtype, self.recurrence, self.hidden_size) == "fused-cpu":
            xg = self.ln_x(onednn.linear(x, self.w_x.weight))
        else:
            xg = self.ln_x(self.w_x(x))
        h0, c0 = state
        return ln_lstm_recurrence(
            xg,
            h0,
            c0,
            self.w_h.weight,
            self.ln_h.weight,
            self.ln_h.bias,
            self.bias,
            self.ln_c.weight,
            self.ln_c.bias,
            self.eps,
            self.recurrence,
            self.loop_graphs,
        )


class LayerNormLSTM(nn.Module):
    """A stack of layer-norm LSTM layers with ``nn.LSTM(batch_first=True)``'s interface.

    Args:
        input_size: features per input step ``C``.
        hidden_size: ``H``.
        num_layers: stacked layers.
        dropout: dropout on each layer's output except the last, in training (as ``nn.LSTM``).
        eps: LayerNorm epsilon.
        recurrence: ``auto`` (a fused path where one runs, see :func:`recurrence_path`) or
            ``torch`` (always the PyTorch loop). It changes no parameter.

    ``forward(x [B, T, C], state=None)`` returns ``(output [B, T, H], (h, c))`` with ``h`` and
    ``c`` each ``[num_layers, B, H]``; ``state`` is an optional ``(h0, c0)`` of the same shape
    (zeros when omitted).
    """

    batch_first = True

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dropout: float = 0.0,
        eps: float = 1e-5,
        recurrence: str = "auto",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (got {num_layers})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {dropout})")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.layers = nn.ModuleList(
            LayerNormLSTMLayer(input_size if k == 0 else hidden_size, hidden_size, eps, recurrence)
            for k in range(num_layers)
        )

    def recurrence_path(self, device: torch.device, dtype: torch.dtype = torch.float32) -> RecurrencePath:
        """The path the recurrence takes for inputs of ``dtype`` on ``device`` (autocast as now)."""
        return recurrence_path(device, dtype, cast(LayerNormLSTMLayer, self.layers[0]).recurrence, self.hidden_size)

    def forward(
        self, x: Tensor, state: Optional[LSTMState] = None
    ) -> tuple[Tensor, LSTMState]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"LayerNormLSTM expects input [batch, time, {self.input_size}] "
                f"(got {tuple(x.shape)})"
            )
        batch = x.shape[0]
        expected = (self.num_layers, batch, self.hidden_size)
        if state is None:
            # new_zeros follows the weights' device; dtype follows the input so that float64
            # tests and autocast both work.
            h0 = cast(torch.Tensor, self.layers[0].bias).new_zeros(expected, dtype=x.dtype)
            c0 = h0
        else:
            h0, c0 = state
            if tuple(h0.shape) != expected or tuple(c0.shape) != expected:
                raise ValueError(
                    f"LayerNormLSTM state must be (h0, c0) each {list(expected)} "
                    f"(got {list(h0.shape)} and {list(c0.shape)})"
                )
        out = x
        h_n: list[Tensor] = []
        c_n: list[Tensor] = []
        for k, layer in enumerate(self.layers):
            if k > 0 and self.dropout > 0.0:
                out = F.dropout(out, self.dropout, self.training)
            out, (h, c) = layer(out, (h0[k], c0[k]))  # out: [B, T, H]
            h_n.append(h)
            c_n.append(c)
        return out, (torch.stack(h_n), torch.stack(c_n))

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"dropout={self.dropout}, batch_first=True"
        )
