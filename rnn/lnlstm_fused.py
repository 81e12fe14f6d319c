"""The fused layer-norm LSTM recurrence: an autograd Function with a hand-written backward.

Which path runs (:func:`recurrence_path`):

- ``fused-cpu``: CPU tensors in float32/float64 and the C++ kernels built (:mod:`rnn.lnlstm_cpu`).
- ``triton``: CUDA tensors in float32/bfloat16/float16 and Triton importable (:mod:`rnn.triton_lnlstm`).
- ``torch``: anything else (MPS, autocast on the CPU, no compiler): the PyTorch loop in
  :func:`rnn.lnlstm.ln_lstm_recurrence_reference`, differentiated by autograd.

All paths compute the same function of the same parameters, so a checkpoint trained on one
loads and trains on another.

The backward (haste's design): the per-step kernels return the per-step gradients ``dz`` (the
gate pre-activations, which are also ``d xgb``) and ``da`` (``W_h h``, before LN_h), and the
LayerNorm gains' and biases' gradients, reductions over time and batch (the C++ kernels sum them
in the loop, while each row is in cache; the Triton path reduces after the loop, so its step
kernel needs no atomics). After the loop the recurrent weight gradient is one GEMM
over all timesteps, ``dW_h = sum_t da_t^T h_{t-1}``. The forward saves the LayerNorm statistics
(normalised values and 1/std) and the activated gates, so the backward recomputes nothing.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal, Optional, Protocol, cast

import torch
from torch import Tensor

from rnn import lnlstm_cpu, onednn

log = logging.getLogger(__name__)

RecurrencePath = Literal["fused-cpu", "triton", "torch"]
#: What a layer may be asked to use: ``auto`` picks the fastest available path.
RecurrenceChoice = Literal["auto", "torch"]
RECURRENCE_CHOICES: tuple[str, ...] = ("auto", "torch")

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class Kernels(Protocol):
    """One path's per-step loops, time-major (see ``rnn/csrc/lnlstm_cpu.cpp`` for the contract)."""

    def forward(self, xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor,
                gc: Tensor, bc: Tensor, eps: float) -> list[Tensor]: ...

    def backward(self, dout: Tensor, dhT: Tensor, dcT: Tensor, w: Tensor, gh: Tensor, gc: Tensor,
                 cs: Tensor, gates: Tensor, ahat: Tensor, rstd_a: Tensor, chat: Tensor,
                 rstd_c: Tensor, tc: Tensor) -> list[Tensor]: ...


@functools.cache
def _triton_kernels() -> Optional[Kernels]:
    """The Triton kernels, or None where Triton does not import (asked once per process)."""
    try:
        from rnn import triton_lnlstm
    except Exception as e:  # noqa: BLE001 (ImportError, or a Triton that fails to initialise)
        log.info("Triton unavailable (%s): the layer-norm LSTM runs the PyTorch loop on CUDA", e)
        return None
    return triton_lnlstm.kernels()


def recurrence_path(device: torch.device, dtype: torch.dtype, choice: str = "auto") -> RecurrencePath:
    """The path a layer on ``device`` with ``dtype`` inputs takes (autocast state is read now)."""
    if choice == "torch":
        return "torch"
    if device.type == "cpu":
        if dtype in _CPU_DTYPES and not torch.is_autocast_enabled("cpu") and lnlstm_cpu.load() is not None:
            return "fused-cpu"
    elif device.type == "cuda":
        if dtype in _CUDA_DTYPES and _triton_kernels() is not None:
            return "triton"
    return "torch"


def kernels_for(path: RecurrencePath) -> Kernels:
    """The kernels of a fused ``path``."""
    if path == "fused-cpu":
        module = lnlstm_cpu.load()
        assert module is not None, "recurrence_path said fused-cpu"
        return cast(Kernels, module)
    if path == "triton":
        kernels = _triton_kernels()
        assert kernels is not None, "recurrence_path said triton"
        return kernels
    raise ValueError(f"no fused kernels for path {path!r} (expected fused-cpu or triton)")


class FusedLNLSTM(torch.autograd.Function):
    """``(xgb [B, T, 4H], h0, c0, W_h, LN_h gain, LN_h bias + b, LN_c gain/bias) -> (out [B, T, H], h_T, c_T)``."""

    @staticmethod
    def forward(
        ctx: Any, xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor,
        gc: Tensor, bc: Tensor, eps: float, kernels: Kernels,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = xgb.dtype
        # The kernels want one dtype and contiguous tensors. The parameters are cast to the
        # activations' dtype (as autocast would), and their gradients cast back below.
        h0_, c0_, w_, gh_, bh_, gc_, bc_ = (t.to(dtype).contiguous() for t in (h0, c0, w, gh, bh, gc, bc))
        hs, cs, gates, ahat, rstd_a, chat, rstd_c, tc = kernels.forward(
            xgb.contiguous(), h0_, c0_, w_, gh_, bh_, gc_, bc_, eps)
        ctx.kernels = kernels
        ctx.param_dtypes = [t.dtype for t in (h0, c0, w, gh, bh, gc, bc)]
        ctx.save_for_backward(hs, cs, gates, ahat, rstd_a, chat, rstd_c, tc, w_, gh_, gc_)
        out = hs[1:].transpose(0, 1).contiguous()  # [B, T, H]: a copy, so no one writes into hs
        return out, hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx: Any, dout: Optional[Tensor], dhT: Optional[Tensor], dcT: Optional[Tensor]) -> tuple[Any, ...]:
        hs, cs, gates, ahat, rstd_a, chat, rstd_c, tc, w, gh, gc = ctx.saved_tensors
        T, B, H = tc.shape
        zeros = tc.new_zeros((B, H))
        d_out = tc.new_zeros((B, T, H)) if dout is None else dout.to(tc.dtype).contiguous()
        d_hT = zeros if dhT is None else dhT.to(tc.dtype).contiguous()
        d_cT = zeros if dcT is None else dcT.to(tc.dtype).contiguous()
        dz, da, dh0, dc0, dgh, dbh, dgc, dbc = ctx.kernels.backward(
            d_out, d_hT, d_cT, w, gh, gc, cs, gates, ahat, rstd_a, chat, rstd_c, tc)
        # After the loop: the recurrent weight gradient as one GEMM over all T*B rows,
        # dW_h = sum_t da_t^T h_{t-1}, accumulated in float32 at least.
        acc = torch.promote_types(tc.dtype, torch.float32)
        dw = onednn.matmul_tn(da.flatten(0, 1).to(acc), hs[:-1].flatten(0, 1).to(acc))  # [4H, H]
        grads = [dh0, dc0, dw, dgh, dbh, dgc, dbc]
        grads = [g.to(d) for g, d in zip(grads, ctx.param_dtypes, strict=True)]
        return (dz, *grads, None, None)


def _apply(
    path: RecurrencePath, xgb: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, ln_h_weight: Tensor,
    ln_h_bias: Tensor, ln_c_weight: Tensor, ln_c_bias: Tensor, eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    return FusedLNLSTM.apply(
        xgb, h0, c0, w_hh, ln_h_weight, ln_h_bias, ln_c_weight, ln_c_bias, eps, kernels_for(path))


#: ``_apply`` as ``torch.compile`` must see it: ``torch.compiler.disable``-d, a graph break, so the
#: kernels and the hand-written backward run eagerly between compiled pieces (dynamo cannot trace
#: the C++ or Triton launches). Made by :func:`eager_under_compile`, which :mod:`rnn.compile` calls
#: before compiling, and not at import: ``torch.compiler.disable`` imports dynamo, about 1 s.
_eager_apply: Optional[Any] = None


def eager_under_compile() -> None:
    """Make :func:`fused_recurrence` and the oneDNN input projection (:func:`rnn.onednn.linear`)
    graph breaks that run eagerly under ``torch.compile`` (idempotent)."""
    global _eager_apply
    if _eager_apply is None:
        _eager_apply = torch.compiler.disable(_apply)
    onednn.eager_under_compile()


def fused_recurrence(
    path: RecurrencePath, xgb: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, ln_h_weight: Tensor,
    ln_h_bias: Tensor, ln_c_weight: Tensor, ln_c_bias: Tensor, eps: float,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One layer over time on a fused ``path``. The gate bias ``b`` is passed inside
    ``ln_h_bias`` (both are added to every step's pre-activations)."""
    run = _eager_apply if _eager_apply is not None and torch.compiler.is_compiling() else _apply
    out, h, c = run(path, xgb, h0, c0, w_hh, ln_h_weight, ln_h_bias, ln_c_weight, ln_c_bias, eps)
    return out, (h, c)
