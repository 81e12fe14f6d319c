"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"), in both of their forms.

Their gates and candidate state read the input only, never ``h_{t-1}``, so one layer's recurrence
is linear in the state, element-wise::

    h_t = a_t * h_{t-1} + b_t                                     # [B, H] each

    minGRU:  z = sigmoid(k_z),  a = 1 - z,   b = z * g(k_h)
    minLSTM: f = sigmoid(k_f),  i = sigmoid(k_i),  a = f / (f + i),  b = i / (f + i) * g(k_h)

with ``(k_h, k_z)`` or ``(k_h, k_f, k_i)`` one linear map of ``x_t`` (all timesteps in one matmul)
and ``g(x) = x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below: positive, so ``h`` stays positive and
the recurrence can run in log space (the paper's appendix B.3). minLSTM's gates are normalised
(``f + i = 1`` after dividing), which makes the state time-independent in scale (its section 3.2.3).

Two forms of the same function:

- :func:`parallel_scan_log` (training and evaluation on CUDA and MPS): ``log h_t = a*_t +
  logcumsumexp_s<=t(log b_s - a*_s)`` with ``a*_t = sum_s<=t log a_s`` (Heinsen 2023): a cumulative
  sum and a cumulative log-sum-exp over time, no loop. Float32 keeps about ``1e-7 * |a*_T|`` of
  absolute precision in ``log h``: ``|a*_T|`` is about ``0.7 T`` for gates near 0.5, so T in the
  thousands is fine.
- :func:`sequential_scan` (sampling in ``LanguageModel.step``, and training on the CPU): the
  recurrence itself, one fused multiply-add per step, as an autograd Function with a hand-written
  backward (the reverse recurrence ``G_t = dh_t + a_{t+1} G_{t+1}``, then ``da = G h_{t-1}``,
  ``db = G``). Why the CPU trains on it: with one or two threads, parallelism over time buys
  nothing, and torch's CPU ``logcumsumexp`` runs a scalar loop per column whose backward takes two
  more; at B 32, T 256, H 512 one layer's log-space scan took 0.6 s forward and backward on the
  2-core dev VM, this loop 0.06 s. Linear space is stable here: ``0 <= a <= 1`` and ``b > 0``, so
  nothing is divided and nothing overflows.

:class:`MinCell` is one layer's input projection and scan; what surrounds it in a stack (norms,
residuals, the MLP) is :mod:`rnn.minstack`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Candidate-state and gate projections per cell: minGRU (h, z), minLSTM (h, f, i).
GATES = {"mingru": 2, "minlstm": 3}


def g(x: Tensor) -> Tensor:
    """The paper's positive activation: ``x + 0.5`` for ``x >= 0``, ``sigmoid(x)`` below (continuous at 0)."""
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """``log g(x)``, stable for any ``x`` (both branches finite everywhere, so no NaN gradient)."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def parallel_scan_log(log_a: Tensor, log_b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t`` over ``T`` for all ``t`` at once, from ``log a``, ``log b``
    ``[B, T, H]`` and an optional positive ``h0`` ``[B, H]`` (None: zero). Returns ``h`` ``[B, T, H]``."""
    if h0 is not None:
        # h0 enters as a step 0 with a = 1 (log 0) and b = h0. Clamped: log(0) would be -inf.
        tiny = torch.finfo(h0.dtype).tiny
        log_a = F.pad(log_a, (0, 0, 1, 0))  # [B, T+1, H]
        log_b = torch.cat([h0.clamp_min(tiny).log().unsqueeze(1), log_b], dim=1)
    a_star = log_a.cumsum(dim=1)  # [B, T(+1), H]
    log_h = a_star + (log_b - a_star).logcumsumexp(dim=1)
    if h0 is not None:
        log_h = log_h[:, 1:]
    return log_h.exp()


class SequentialScan(torch.autograd.Function):
    """``(a, b [B, T, H], h0 [B, H]) -> h [B, T, H]``, ``h_t = a_t h_{t-1} + b_t``, step by step.

    Runs time-major (each step reads and writes contiguous ``[B, H]`` rows); saves ``a`` and every
    ``h`` for the backward, which runs the recurrence in reverse (see the module doc).
    """

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:
        a_tm, b_tm = a.transpose(0, 1).contiguous(), b.transpose(0, 1).contiguous()  # [T, B, H]
        hs = a_tm.new_empty((a_tm.shape[0] + 1, *a_tm.shape[1:]))  # [T+1, B, H]: h0, h_1, ..., h_T
        hs[0] = h0
        for t in range(a_tm.shape[0]):
            torch.addcmul(b_tm[t], a_tm[t], hs[t], out=hs[t + 1])
        ctx.save_for_backward(a_tm, hs)
        return hs[1:].transpose(0, 1)  # [B, T, H]

    @staticmethod
    def backward(ctx: Any, dh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a_tm, hs = ctx.saved_tensors
        dh_tm = dh.transpose(0, 1).contiguous()  # [T, B, H]
        steps = dh_tm.shape[0]
        grad = torch.empty_like(dh_tm)  # G_t = dL/dh_t through every later step
        grad[steps - 1] = dh_tm[steps - 1]
        for t in range(steps - 2, -1, -1):
            torch.addcmul(dh_tm[t], a_tm[t + 1], grad[t + 1], out=grad[t])
        da = (grad * hs[:-1]).transpose(0, 1)  # dh_t/da_t = h_{t-1}
        return da, grad.transpose(0, 1), a_tm[0] * grad[0]


def sequential_scan(a: Tensor, b: Tensor, h0: Optional[Tensor] = None) -> Tensor:
    """The recurrence step by step (:class:`SequentialScan`), from ``a``, ``b`` ``[B, T, H]`` (not
    logs) and ``h0`` ``[B, H]`` (None: zero); returns ``h`` ``[B, T, H]``."""
    h0 = a.new_zeros(a.shape[0], a.shape[2]) if h0 is None else h0
    return SequentialScan.apply(a, b, h0)


#: How a :class:`MinCell` runs its recurrence: ``parallel`` (log space), ``sequential``, or ``auto``
#: (sequential on the CPU, parallel elsewhere; see the module doc).
Scan = Literal["auto", "parallel", "sequential"]


def resolve_scan(scan: str, device: torch.device) -> str:
    """``parallel`` or ``sequential``: what ``scan`` means on ``device``."""
    if scan == "auto":
        return "sequential" if device.type == "cpu" else "parallel"
    if scan not in ("parallel", "sequential"):
        raise ValueError(f"scan must be one of auto, parallel, sequential (got {scan!r})")
    return scan


class MinCell(nn.Module):
    """One minGRU or minLSTM layer: a linear map of the input, then the scan. ``[B, T, C] -> [B, T, H]``.

    The projection's bias starts at 0 except minLSTM's forget slice, at 1 (as the LSTMs here), so
    an untrained layer leans towards keeping its state.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int) -> None:
        super().__init__()
        if cell not in GATES:
            raise ValueError(f"cell must be one of {', '.join(GATES)} (got {cell!r})")
        self.cell = cell
        self.hidden_size = hidden_size
        self.proj = nn.Linear(input_size, GATES[cell] * hidden_size)  # (h, z) or (h, f, i)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        if cell == "minlstm":
            with torch.no_grad():
                self.proj.bias[hidden_size : 2 * hidden_size] = 1.0

    def log_coefficients(self, k: Tensor) -> tuple[Tensor, Tensor]:
        """``(log a, log b)`` ``[B, T, H]`` each, from the projection ``k`` ``[B, T, G*H]``."""
        if self.cell == "mingru":
            k_h, k_z = k.chunk(2, dim=-1)
            # log(1 - sigmoid(k)) = -softplus(k); log sigmoid(k) = -softplus(-k)
            return -F.softplus(k_z), -F.softplus(-k_z) + log_g(k_h)
        k_h, k_f, k_i = k.chunk(3, dim=-1)
        # log(f / (f + i)) = -softplus(log i - log f), with log sigmoid(k) = -softplus(-k)
        diff = F.softplus(-k_f) - F.softplus(-k_i)
        return -F.softplus(diff), -F.softplus(-diff) + log_g(k_h)

    def coefficients(self, k: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)`` ``[B, T, H]`` each, from the projection ``k``: the same values, in linear space."""
        if self.cell == "mingru":
            k_h, k_z = k.chunk(2, dim=-1)
            return torch.sigmoid(-k_z), torch.sigmoid(k_z) * g(k_h)  # 1 - z, z * g(k_h)
        k_h, k_f, k_i = k.chunk(3, dim=-1)
        f, i = torch.sigmoid(k_f), torch.sigmoid(k_i)
        total = f + i
        return f / total, i / total * g(k_h)

    def forward(self, x: Tensor, h0: Optional[Tensor] = None, scan: str = "auto") -> Tensor:
        """``h`` ``[B, T, H]`` for ``x`` ``[B, T, C]`` from ``h0`` ``[B, H]`` (None: zero), by the
        ``scan`` :func:`resolve_scan` picks for ``x``'s device (the same function either way); in
        float32 at least, under autocast too."""
        k = self.proj(x)  # [B, T, G*H]; under autocast in its dtype
        # The scan runs in at least float32, autocast off: a cumulative sum of log gates in bfloat16
        # (8 bits of mantissa) would be off by whole units after a few hundred steps.
        dtype = torch.promote_types(k.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            k = k.to(dtype)
            h0 = None if h0 is None else h0.to(dtype)
            if resolve_scan(scan, x.device) == "parallel":
                return parallel_scan_log(*self.log_coefficients(k), h0)
            return sequential_scan(*self.coefficients(k), h0)
