"""The fused layer-norm LSTM recurrence: an autograd Function with a hand-written backward over a
path's kernels (:class:`rnn.lnlstm.kernels.Kernels`: C++ on the CPU, Triton on CUDA).

Which kernels run is decided by the layer's :class:`rnn.lnlstm.LNLSTMPath`; this module only runs
the kernels it is handed. All paths compute the function of :mod:`rnn.lnlstm.reference`, so a
checkpoint trained on one loads and trains on another.

Autocast: under autocast the Function does what ``torch.amp.custom_fwd``/``custom_bwd`` would
for the tensors' own device type (the decorators fix one device type, and this Function serves
the CPU and CUDA): it casts ``W_h`` once per forward to the autocast dtype, saves it, and runs
``W_h h``, ``da W_h`` and ``dW_h`` in that dtype with autocast off inside, so no step re-casts.

The backward (haste's design): the per-step kernels return the per-step gradients ``dz`` (the
gate pre-activations, which are also ``d xgb``) and ``da`` (``W_h h``, before LN_h), and the
LayerNorm gains' and biases' gradients, reductions over time and batch (the C++ kernels sum them
in the loop, while each row is in cache; the Triton path reduces after the loop, so its step
kernel needs no atomics). After the loop the recurrent weight gradient is one GEMM
over all timesteps, ``dW_h = sum_t da_t^T h_{t-1}``. The forward saves the LayerNorm statistics
(normalised values and 1/std) and the activated gates (:class:`rnn.lnlstm.kernels.SavedTensors`),
so the backward recomputes nothing.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from rnn.lnlstm import onednn
from rnn.lnlstm.kernels import Kernels, SavedTensors
from rnn.lnlstm.loop_graphs import LoopGraphs

_N_SAVED = len(SavedTensors._fields)


class FusedLNLSTM(torch.autograd.Function):
    """``(xgb [B, T, 4H], h0, c0, W_h, LN_h gain, LN_h bias + b, LN_c gain/bias) -> (out [B, T, H], h_T, c_T)``."""

    @staticmethod
    def forward(
        ctx: Any, xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor,
        gc: Tensor, bc: Tensor, eps: float, kernels: Kernels, graphs: Optional[LoopGraphs] = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dev = xgb.device.type
        # The matmuls' dtype: autocast's where it is on (cast W_h once here, not every step),
        # else the activations'. The kernels want contiguous tensors; the parameters are cast as
        # autocast would, and their gradients cast back in backward.
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else xgb.dtype

        def loop(xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor, gc: Tensor,
                 bc: Tensor) -> list[Tensor]:
            # SavedTensors' fields, then w, gh, gc: under a graph these are its static copies, which
            # the backward (graph) must read, not this call's tensors. A list: a graph's outputs.
            return [*kernels.forward(xgb, h0, c0, w, gh, bh, gc, bc, eps), w, gh, gc]

        with torch.autocast(dev, enabled=False):
            inputs = [xgb.contiguous(), *(t.to(dtype).contiguous() for t in (h0, c0, w, gh, bh, gc, bc))]
            if graphs is None:
                outs, ctx.lease = loop(*inputs), None
            else:
                outs, ctx.lease = graphs.forward(loop, inputs)
            saved = SavedTensors._make(outs[:_N_SAVED])
            out = saved.hs[1:].transpose(0, 1).contiguous()  # [B, T, H]: a copy, so no one writes into hs
        ctx.kernels, ctx.graphs = kernels, graphs
        ctx.x_dtype = xgb.dtype
        ctx.param_dtypes = [t.dtype for t in (h0, c0, w, gh, bh, gc, bc)]
        ctx.save_for_backward(*outs)  # SavedTensors' fields, W_h, LN_h gain, LN_c gain
        return out, saved.hs[-1].clone(), saved.cs[-1].clone()

    @staticmethod
    def backward(ctx: Any, dout: Optional[Tensor], dhT: Optional[Tensor], dcT: Optional[Tensor]) -> tuple[Any, ...]:
        *tensors, w, gh, gc = ctx.saved_tensors
        saved = SavedTensors._make(tensors)
        T, B, H = saved.tc.shape
        dtype = saved.hs.dtype  # the forward's matmul dtype
        kernels: Kernels = ctx.kernels

        def loop(d_out: Tensor, d_hT: Tensor, d_cT: Tensor) -> list[Tensor]:
            g = kernels.backward(d_out, d_hT, d_cT, w, gh, gc, saved)
            # After the loop: the recurrent weight gradient as one GEMM over all T*B rows,
            # dW_h = sum_t da_t^T h_{t-1}, in the matmuls' dtype (cuBLAS accumulates half
            # precision in float32), float32 at least otherwise.
            acc = torch.promote_types(g.da.dtype, dtype)
            dw = onednn.matmul_tn(g.da.flatten(0, 1).to(acc), saved.hs[:-1].flatten(0, 1).to(acc))  # [4H, H]
            # The gradients of forward's inputs, in their order (xgb's is dz).
            return [g.dz, g.dh0, g.dc0, dw, g.dgh, g.dbh, g.dgc, g.dbc]

        with torch.autocast(saved.hs.device.type, enabled=False):
            d_out = saved.hs.new_zeros((B, T, H)) if dout is None else dout.to(dtype).contiguous()
            d_hT = saved.hs.new_zeros((B, H)) if dhT is None else dhT.to(dtype).contiguous()
            d_cT = saved.cs.new_zeros((B, H)) if dcT is None else dcT.to(saved.cs.dtype).contiguous()
            if ctx.graphs is None:
                dz, *grads = loop(d_out, d_hT, d_cT)
            else:
                dz, *grads = ctx.graphs.backward(ctx.lease, loop, [d_out, d_hT, d_cT])
        dz = dz.to(ctx.x_dtype)
        grads = [g.to(d) for g, d in zip(grads, ctx.param_dtypes, strict=True)]
        return (dz, *grads, None, None, None)


def fused_recurrence(
    kernels: Kernels, xgb: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, ln_h_weight: Tensor,
    ln_h_bias: Tensor, ln_c_weight: Tensor, ln_c_bias: Tensor, eps: float, graphs: Optional[LoopGraphs] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One layer over time on ``kernels``: ``(out [B, T, H], (h_T, c_T))``. The gate bias ``b`` is
    passed inside ``ln_h_bias`` (both are added to every step's pre-activations). ``graphs``: the
    layer's CUDA graphs (:mod:`rnn.lnlstm.loop_graphs`), used only where autograd records (training):
    ``Function.forward`` itself runs without grad mode."""
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (xgb, w_hh))
    out, h, c = FusedLNLSTM.apply(xgb, h0, c0, w_hh, ln_h_weight, ln_h_bias, ln_c_weight, ln_c_bias, eps, kernels,
                                  graphs if training else None)
    return out, (h, c)
