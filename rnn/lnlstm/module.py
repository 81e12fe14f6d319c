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
  and it lives in :func:`ln_lstm_recurrence`, which takes the path the layer's
  :class:`rnn.lnlstm.LNLSTMPath` picks: a fused one where one is available
  (:mod:`rnn.lnlstm.fused`: C++ on the CPU, Triton on CUDA), otherwise the PyTorch loop
  :func:`rnn.lnlstm.reference.ln_lstm_recurrence_reference`. Every path computes the same
  function of the same parameters.
"""

from __future__ import annotations

from typing import Optional, cast

import torch
from torch import Tensor, nn

from rnn.lnlstm.loop_graphs import LoopGraphs
from rnn.lnlstm.path import LNLSTMPath, RecurrencePath
from rnn.lnlstm.reference import LSTMState, ln_lstm_recurrence_reference
from rnn.regularize import drop_connect, sequence_dropout


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
    path: Optional[LNLSTMPath] = None,
    graphs: Optional[LoopGraphs] = None,
) -> tuple[Tensor, LSTMState]:
    """Run one layer-norm LSTM layer over time, given its already-normalised input projection.

    ``path``: the implementations it may run (:class:`rnn.lnlstm.LNLSTMPath`; None: made from the
    environment now, :meth:`~rnn.lnlstm.LNLSTMPath.from_env`), of which it takes the one for these
    tensors. ``graphs``: the layer's CUDA graphs of its Triton loops (:mod:`rnn.lnlstm.loop_graphs`),
    or None for none. The other arguments and the result are those of
    :func:`rnn.lnlstm.reference.ln_lstm_recurrence_reference`.
    """
    path = LNLSTMPath.from_env() if path is None else path
    kind = path.resolve(xg.device, xg.dtype, hidden_size=h0.shape[-1])
    if kind == "torch":
        return ln_lstm_recurrence_reference(
            xg, h0, c0, w_hh, ln_h_weight, ln_h_bias, bias, ln_c_weight, ln_c_bias, eps)
    # b and LN_h's bias are both added to every step's pre-activations after normalisation, so
    # the kernels take their sum (one [4H] add, not a pass over [B, T, 4H]); both get its gradient.
    return path.run_fused(
        kind, xg, h0, c0, w_hh, ln_h_weight, ln_h_bias + bias, ln_c_weight, ln_c_bias, eps, graphs)


class LayerNormLSTMLayer(nn.Module):
    """One layer of :class:`LayerNormLSTM`: parameters plus the batched input projection.

    ``path``: the implementations it may run (default :meth:`LNLSTMPath.from_env`, ``auto``).
    ``weight_drop``: DropConnect on ``W_h`` in training, one mask per forward pass
    (:func:`rnn.regularize.drop_connect`): the masked copy is what every path's recurrence receives,
    and autograd carries its gradient back to ``W_h``.
    """

    def __init__(self, input_size: int, hidden_size: int, eps: float = 1e-5, path: Optional[LNLSTMPath] = None,
                 weight_drop: float = 0.0) -> None:
        super().__init__()
        self.path = LNLSTMPath.from_env() if path is None else path
        self.weight_drop = weight_drop
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
        # CUDA graphs of the Triton loops (no parameters, no state dict entry; see rnn.lnlstm.loop_graphs).
        self.loop_graphs: Optional[LoopGraphs] = LoopGraphs() if self.path.graphs else None
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
        # runs on oneDNN or MKL, whichever this machine runs faster (rnn.lnlstm.onednn); the torch
        # path stays plain.
        if self.path.resolve(x.device, x.dtype, self.hidden_size) == "fused-cpu":
            xg = self.ln_x(self.path.input_projection(x, self.w_x.weight))
        else:
            xg = self.ln_x(self.w_x(x))
        h0, c0 = state
        return ln_lstm_recurrence(
            xg,
            h0,
            c0,
            drop_connect(self.w_h.weight, self.weight_drop, self.training),
            self.ln_h.weight,
            self.ln_h.bias,
            self.bias,
            self.ln_c.weight,
            self.ln_c.bias,
            self.eps,
            self.path,
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
        recurrence: ``auto`` (a fused path where one runs, see :class:`rnn.lnlstm.LNLSTMPath`) or
            ``torch`` (always the PyTorch loop). It changes no parameter.
        path: the implementations the layers may run, in place of ``recurrence`` (default
            ``LNLSTMPath.from_env(recurrence)``); it too changes no parameter.
        weight_drop: DropConnect on each layer's ``W_h`` in training (see :class:`LayerNormLSTMLayer`).
        locked: the dropout between layers uses one mask per sequence, the same at every step.

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
        path: Optional[LNLSTMPath] = None,
        weight_drop: float = 0.0,
        locked: bool = False,
    ) -> None:
        super().__init__()
        if path is not None and recurrence != "auto":
            raise ValueError(f"give recurrence or path, not both (got recurrence={recurrence!r} and a path)")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (got {num_layers})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {dropout})")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.locked = locked
        path = LNLSTMPath.from_env(recurrence) if path is None else path
        self.layers = nn.ModuleList(
            LayerNormLSTMLayer(input_size if k == 0 else hidden_size, hidden_size, eps, path, weight_drop)
            for k in range(num_layers)
        )

    def recurrence_path(self, device: torch.device, dtype: torch.dtype = torch.float32) -> RecurrencePath:
        """The path the recurrence takes for inputs of ``dtype`` on ``device`` (autocast as now)."""
        return cast(LayerNormLSTMLayer, self.layers[0]).path.resolve(device, dtype, self.hidden_size)

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
                out = sequence_dropout(out, self.dropout, self.training, self.locked)
            out, (h, c) = layer(out, (h0[k], c0[k]))  # out: [B, T, H]
            h_n.append(h)
            c_n.append(c)
        return out, (torch.stack(h_n), torch.stack(c_n))

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"dropout={self.dropout}, batch_first=True"
        )


def eager_under_compile(model: nn.Module) -> None:
    """Give every layer-norm LSTM layer in ``model`` the ``torch.compile`` graph breaks
    (:class:`rnn.lnlstm.path.CompileBreaks`): under ``torch.compile`` its fused recurrence and its
    oneDNN input projection then run eagerly between compiled pieces. :mod:`rnn.compile` calls it
    before compiling a model; it changes nothing outside a compile (idempotent)."""
    for module in model.modules():
        if isinstance(module, LayerNormLSTMLayer):
            module.path = module.path.with_compile_breaks()
