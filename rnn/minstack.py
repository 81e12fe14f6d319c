"""A stack of minGRU or minLSTM layers (:mod:`rnn.mincells`) with ``nn.LSTM(batch_first=True)``'s interface.

Each layer is the block of the authors' public code (BorealisAI/minRNNs, ``models/model.py``):
a pre-normalised residual branch around the cell and its output projection, optionally a
pre-normalised residual MLP (``model.min_mlp``), and a norm after the last layer::

    x = x + drop(W_o cell(norm_1(x)))        # [B, T, H]; no residual where the input is narrower (E != H)
    x = x + drop(MLP(norm_2(x)))             # min_mlp only; MLP: H -> 4H -> H, GELU
    out = norm_f(x)                          # after the last layer

Why these and not a bare stack of cells: a cell has no hidden-to-hidden weights, so ``W_o`` is
what mixes the features of ``h`` before the next layer; ``h`` is positive by construction
(``g > 0``), which ``W_o`` maps back to signed values for the residual stream; and the residual
and norm are what lets layers stack. The norms are RMSNorm, one of the two the authors' code
offers. Their code's two optional parts: the MLP is ``min_mlp`` (off by default: at H 512 it
holds 8H^2 weights per layer against the cell's 2-3 H^2 + H^2, and roughly doubles a CPU step),
and the causal depth-wise convolution is left out.

``drop`` is the model's dropout on each residual branch (``standard`` or ``locked``, see
:func:`rnn.regularize.sequence_dropout`), in every layer. The state is each layer's ``h`` (the
cell's, before ``W_o``), ``[num_layers, B, H]``, as for ``nn.GRU``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from rnn.mincells import MinCell, resolve_scan
from rnn.regularize import sequence_dropout

#: The MLP's hidden width, in units of ``hidden_size`` (the authors' code and transformers use 4).
MLP_RATIO = 4


class MinBlock(nn.Module):
    """One layer of :class:`MinStack`: the cell branch, then (``mlp``) the MLP branch, each pre-normalised."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, mlp: bool = False) -> None:
        super().__init__()
        self.residual = input_size == hidden_size
        self.norm_cell = nn.RMSNorm(input_size)
        self.cell = MinCell(cell, input_size, hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)  # W_o
        self.norm_mlp: Optional[nn.Module] = nn.RMSNorm(hidden_size) if mlp else None
        self.mlp: Optional[nn.Module] = nn.Sequential(
            nn.Linear(hidden_size, MLP_RATIO * hidden_size), nn.GELU(), nn.Linear(MLP_RATIO * hidden_size, hidden_size)
        ) if mlp else None

    def forward(self, x: Tensor, h0: Optional[Tensor], dropout: float, locked: bool,
                scan: str) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, T, C]``, ``h0`` ``[B, H]`` or None -> (``[B, T, H]``, the cell's last ``h`` ``[B, H]``)."""
        h = self.cell(self.norm_cell(x), h0, scan)  # [B, T, H], positive
        branch = sequence_dropout(self.out(h), dropout, self.training, locked)
        x = x + branch if self.residual else branch
        if self.mlp is not None and self.norm_mlp is not None:
            x = x + sequence_dropout(self.mlp(self.norm_mlp(x)), dropout, self.training, locked)
        return x, h[:, -1]


class MinStack(nn.Module):
    """``num_layers`` :class:`MinBlock` layers of ``cell`` (``mingru`` or ``minlstm``), each with an
    MLP where ``mlp``, then RMSNorm.

    ``forward(x [B, T, C], state=None, scan=None)`` returns ``(output [B, T, H], h [L, B, H])``;
    ``state`` is a previous call's ``h`` (None: zeros), so calls continue a sequence. ``scan``
    (:data:`rnn.mincells.Scan`; None: the stack's own, ``auto`` unless built otherwise) picks the
    parallel log-space scan or the step-by-step form; the function is the same.
    """

    batch_first = True

    def __init__(self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 dropout: float = 0.0, locked: bool = False, scan: str = "auto", mlp: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (got {num_layers})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1) (got {dropout})")
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.locked = locked
        resolve_scan(scan, torch.device("cpu"))  # refuses an unknown value now
        self.scan = scan
        self.layers = nn.ModuleList(
            MinBlock(cell, input_size if k == 0 else hidden_size, hidden_size, mlp) for k in range(num_layers)
        )
        self.norm = nn.RMSNorm(hidden_size)

    def scan_path(self, device: torch.device) -> str:
        """``parallel-scan`` or ``sequential-scan``: what this stack runs in training on ``device``."""
        return f"{resolve_scan(self.scan, device)}-scan"

    def forward(self, x: Tensor, state: Optional[Tensor] = None, scan: Optional[str] = None) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"MinStack expects input [batch, time, {self.input_size}] (got {tuple(x.shape)})")
        expected = (self.num_layers, x.shape[0], self.hidden_size)
        if state is not None and tuple(state.shape) != expected:
            raise ValueError(f"MinStack state must be h {list(expected)} (got {list(state.shape)})")
        finals = []
        for k, layer in enumerate(self.layers):
            x, h = layer(x, None if state is None else state[k], self.dropout, self.locked, scan or self.scan)
            finals.append(h)
        return self.norm(x), torch.stack(finals)

    def extra_repr(self) -> str:
        return (f"{self.cell}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"dropout={self.dropout}, locked={self.locked}, scan={self.scan}, batch_first=True")
