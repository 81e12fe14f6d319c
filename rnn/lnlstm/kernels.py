"""The contract between the fused recurrence and its kernels (C++ on the CPU, Triton on CUDA).

A path's kernels run one layer's whole time loop, forward and backward, time-major. The forward
returns :class:`SavedTensors`, everything the backward reads, so the backward recomputes nothing;
the backward returns :class:`KernelGrads`. The two NamedTuples own the order of those tensors: the
C++ extension returns them positionally in that order (see ``csrc/lnlstm_cpu.cpp``) and
:class:`rnn.lnlstm.cpu.CppKernels` names them the moment they come back; everything else reads
them by name.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from torch import Tensor


class SavedTensors(NamedTuple):
    """The forward loop's results, kept for the backward (B batch, T steps, H hidden; gates (i, f, g, o))."""

    hs: Tensor  # [T+1, B, H] h_0 .. h_T (hs[0] = h0), in the matmuls' dtype
    cs: Tensor  # [T+1, B, H] c_0 .. c_T
    gates: Tensor  # [T, B, 4H] the activated gates
    ahat: Tensor  # [T, B, 4H] LN_h's normalised input (W_h h_{t-1} before the affine)
    rstd_a: Tensor  # [T, B] LN_h's 1/std
    chat: Tensor  # [T, B, H] LN_c's normalised c_t
    rstd_c: Tensor  # [T, B] LN_c's 1/std
    tc: Tensor  # [T, B, H] tanh(LN_c(c_t))


class KernelGrads(NamedTuple):
    """The backward loop's results: per-step gradients and the LayerNorm affines' sums over time and batch."""

    dz: Tensor  # [B, T, 4H] dL/d(gate pre-activations), which is also dL/dxgb
    da: Tensor  # [T, B, 4H] dL/d(W_h h_{t-1}), before LN_h: the caller's one GEMM makes dW_h from it
    dh0: Tensor  # [B, H]
    dc0: Tensor  # [B, H]
    dgh: Tensor  # [4H] LN_h gain
    dbh: Tensor  # [4H] LN_h bias (and so the gate bias b)
    dgc: Tensor  # [H] LN_c gain
    dbc: Tensor  # [H] LN_c bias


class Kernels(Protocol):
    """One path's time loops. ``xgb`` ``[B, T, 4H]`` is ``LN_x(W_x x)``; ``bh`` is LN_h's bias plus
    the gate bias ``b`` (both are added to every step's pre-activations after normalisation);
    ``dout`` is ``[B, T, H]``, batch-first like the module's tensors."""

    def forward(self, xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor,
                gc: Tensor, bc: Tensor, eps: float) -> SavedTensors: ...

    def backward(self, dout: Tensor, dhT: Tensor, dcT: Tensor, w: Tensor, gh: Tensor, gc: Tensor,
                 saved: SavedTensors) -> KernelGrads: ...
