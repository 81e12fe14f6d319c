"""A path's kernels checked against the PyTorch loop on a tiny batch, before a layer first uses them.

Triton compiles a kernel at its first launch, for each hidden-size block and dtype, and a compiler
or driver failure there would otherwise end the trial; so :class:`rnn.lnlstm.path.CheckedKernels`
runs :func:`self_check` once per (device, dtype, block) and falls back to the loop when it fails.
:func:`max_relative_error` and :func:`projected_loss` are the comparison, shared with
``bench.triton_check``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from rnn.errors import one_line
from rnn.lnlstm.fused import FusedLNLSTM
from rnn.lnlstm.kernels import Kernels
from rnn.lnlstm.reference import ln_lstm_recurrence_reference

_HALF = (torch.bfloat16, torch.float16)


def max_relative_error(got: Tensor, want: Tensor) -> float:
    """``max |got - want| / max(1, max |want|)``; inf where ``got`` is not finite."""
    got, want = got.detach().double(), want.detach().double()
    if not bool(torch.isfinite(got).all()):
        return math.inf
    return float((got - want).abs().max()) / max(1.0, float(want.abs().max()))


def projected_loss(outs: Sequence[Tensor], proj: Sequence[Tensor]) -> Tensor:
    """A scalar loss with a random gradient for every output: ``sum(out * proj)`` in float64."""
    total = outs[0].new_zeros((), dtype=torch.float64)
    for a, p in zip(outs, proj, strict=True):
        total = total + (a.double() * p).sum()
    return total


#: The self-check's tolerance on that error: float32 matmuls may run TF32 (10-bit mantissa); half
#: precision rounds h, the gates and the normalised values. A wrong kernel is off by O(1) or NaN.
SELF_CHECK_TOL = {torch.float32: 2e-2, torch.bfloat16: 1e-1, torch.float16: 5e-2}


def self_check(kernels: Kernels, device: torch.device, dtype: torch.dtype, hidden_size: int) -> Optional[str]:
    """Run ``kernels`` once, forward and backward, on a tiny batch (B 3, T 4) at ``hidden_size``
    against the PyTorch loop in float64; None when they agree, else why not (one line).

    ``dtype`` is the precision the layer would run at: float32 runs float32 inputs with autocast
    off; bfloat16/float16 run float32 inputs under autocast to that dtype, as the trainer does.
    The random inputs come from a generator of their own: the run's RNG streams are left alone.
    """
    B, T, H = 3, 4, hidden_size
    gen = torch.Generator().manual_seed(0)
    shapes = [(B, T, 4 * H), (B, H), (B, H), (4 * H, H), (4 * H,), (4 * H,), (4 * H,), (H,), (H,)]
    scales = [1.0, 1.0, 1.0, H**-0.5, 1.0, 0.1, 0.1, 1.0, 0.1]
    base = [torch.randn(s, generator=gen, dtype=torch.float64) * k for s, k in zip(shapes, scales, strict=True)]
    try:
        with torch.enable_grad():
            want_in = [t.to(device).requires_grad_() for t in base]
            want, (want_h, want_c) = ln_lstm_recurrence_reference(
                want_in[0], want_in[1], want_in[2], want_in[3], want_in[4], want_in[5], want_in[6],
                want_in[7], want_in[8], 1e-5)
            want_out = (want, want_h, want_c)
            proj = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(device) for t in want_out]
            want_grads = torch.autograd.grad(projected_loss(want_out, proj), want_in)

            got_in = [t.to(device, torch.float32).requires_grad_() for t in base]
            xg, h0, c0, w, gh, bh, b, gc, bc = got_in
            with torch.autocast(device.type, dtype=dtype, enabled=dtype in _HALF):
                out, h, c = FusedLNLSTM.apply(xg, h0, c0, w, gh, bh + b, gc, bc, 1e-5, kernels)
            got_out = (out, h, c)
            got_grads = torch.autograd.grad(projected_loss(got_out, proj), got_in)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 (a compile or launch failure of any kind means: don't use it)
        return one_line(e)
    names = ["out", "h_T", "c_T", *(f"grad {n}" for n in ("xg", "h0", "c0", "W_h", "LN_h gain", "LN_h bias",
                                                          "b", "LN_c gain", "LN_c bias"))]
    tol = SELF_CHECK_TOL[dtype]
    for name, a, ref in zip(names, (*got_out, *got_grads), (*want_out, *want_grads), strict=True):
        err = max_relative_error(a, ref)
        if not err <= tol:
            return f"{name} differs from the PyTorch loop by {err:.3g} (tolerance {tol:g})"
    return None
