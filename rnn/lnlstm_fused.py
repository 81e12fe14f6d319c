"""The fused layer-norm LSTM recurrence: an autograd Function with a hand-written backward.

Which path runs (:func:`recurrence_path`):

- ``fused-cpu``: CPU tensors in float32/float64 and the C++ kernels built (:mod:`rnn.lnlstm_cpu`).
- ``triton``: CUDA tensors in float32/bfloat16/float16, Triton importable (:mod:`rnn.triton_lnlstm`),
  ``RNN_LNLSTM_TRITON`` not ``0``, and the kernels' first-use self-check passed (:func:`triton_ready`).
- ``torch``: anything else (MPS, autocast on the CPU, no compiler): the PyTorch loop in
  :func:`rnn.lnlstm.ln_lstm_recurrence_reference`, differentiated by autograd.

All paths compute the same function of the same parameters, so a checkpoint trained on one
loads and trains on another.

Never fatal: Triton compiles a kernel at its first launch, for each hidden-size block and dtype,
and a compiler or driver failure there would otherwise end the trial. So the first time a process
would use the ``triton`` path for a (device, dtype, block), :func:`triton_ready` runs a tiny
forward and backward against the PyTorch loop; on an exception or a mismatch it logs one warning
naming the cause and the process uses the ``torch`` path for that key from then on (the trial row's
``recurrence`` then says ``torch``).

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
(normalised values and 1/std) and the activated gates, so the backward recomputes nothing.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from typing import Any, Literal, Optional, Protocol, cast

import torch
from torch import Tensor

from rnn import lnlstm_cpu, onednn
from rnn.errors import one_line
from rnn.loop_graphs import LoopGraphs

log = logging.getLogger(__name__)

RecurrencePath = Literal["fused-cpu", "triton", "torch"]
#: What a layer may be asked to use: ``auto`` picks the fastest available path.
RecurrenceChoice = Literal["auto", "torch"]
RECURRENCE_CHOICES: tuple[str, ...] = ("auto", "torch")

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HALF = (torch.bfloat16, torch.float16)

#: Set to 0 to never use the Triton kernels (CUDA then runs the PyTorch loop), as ``RNN_LNLSTM_CPP=0``
#: does for the C++ kernels on the CPU.
TRITON_SWITCH = "RNN_LNLSTM_TRITON"
#: The self-check's outcome per (device, dtype, hidden-size block): None passed, else the reason.
_triton_checked: dict[tuple[str, torch.dtype, int], Optional[str]] = {}


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


def _block(hidden_size: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, hidden_size))))  # triton.next_power_of_2


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
    from rnn.lnlstm import ln_lstm_recurrence_reference  # imports this module

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


def triton_ready(device: torch.device, dtype: torch.dtype, hidden_size: int) -> bool:
    """Whether the ``triton`` path may run layers of ``hidden_size`` in ``dtype`` on ``device``.

    False when ``RNN_LNLSTM_TRITON=0``, when Triton does not import, or when the kernels' first-use
    :func:`self_check` failed in this process (logged once, as a warning naming the cause).
    """
    if os.environ.get(TRITON_SWITCH, "1") == "0":
        return False
    kernels = _triton_kernels()
    if kernels is None:
        return False
    key = (str(device), dtype, _block(hidden_size))
    if key not in _triton_checked:
        with torch.autocast(device.type, enabled=False):
            reason = self_check(kernels, device, dtype, hidden_size)
        _triton_checked[key] = reason
        if reason is not None:
            log.warning("the layer-norm LSTM's Triton kernels failed their self-check on %s (%s, hidden %d): %s; "
                        "using the PyTorch loop there (set %s=0 to skip Triton)",
                        device, str(dtype).removeprefix("torch."), hidden_size, reason, TRITON_SWITCH)
    return _triton_checked[key] is None


def recurrence_path(
    device: torch.device, dtype: torch.dtype, choice: str = "auto", hidden_size: int = 8,
) -> RecurrencePath:
    """The path a layer of ``hidden_size`` on ``device`` with ``dtype`` inputs takes (autocast
    state is read now). ``dtype`` is the precision: under autocast, its dtype."""
    if choice == "torch":
        return "torch"
    if device.type == "cpu":
        if dtype in _CPU_DTYPES and not torch.is_autocast_enabled("cpu") and lnlstm_cpu.load() is not None:
            return "fused-cpu"
    elif device.type == "cuda":
        if torch.is_autocast_enabled("cuda"):
            dtype = torch.get_autocast_dtype("cuda")
        if dtype in _CUDA_DTYPES and triton_ready(device, dtype, hidden_size):
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
        gc: Tensor, bc: Tensor, eps: float, kernels: Kernels, graphs: Optional[LoopGraphs] = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dev = xgb.device.type
        # The matmuls' dtype: autocast's where it is on (cast W_h once here, not every step),
        # else the activations'. The kernels want contiguous tensors; the parameters are cast as
        # autocast would, and their gradients cast back in backward.
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else xgb.dtype

        def loop(xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor, gc: Tensor,
                 bc: Tensor) -> list[Tensor]:
            # w, gh, gc go out with the results: under a graph they are its static copies, which
            # the backward (graph) must read, not this call's tensors.
            return [*kernels.forward(xgb, h0, c0, w, gh, bh, gc, bc, eps), w, gh, gc]

        with torch.autocast(dev, enabled=False):
            inputs = [xgb.contiguous(), *(t.to(dtype).contiguous() for t in (h0, c0, w, gh, bh, gc, bc))]
            if graphs is None:
                saved, ctx.lease = loop(*inputs), None
            else:
                saved, ctx.lease = graphs.forward(loop, inputs)
            hs, cs = saved[0], saved[1]
            out = hs[1:].transpose(0, 1).contiguous()  # [B, T, H]: a copy, so no one writes into hs
        ctx.kernels, ctx.graphs = kernels, graphs
        ctx.x_dtype = xgb.dtype
        ctx.param_dtypes = [t.dtype for t in (h0, c0, w, gh, bh, gc, bc)]
        ctx.save_for_backward(*saved)  # hs, cs, gates, ahat, rstd_a, chat, rstd_c, tc, W_h, LN_h gain, LN_c gain
        return out, hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx: Any, dout: Optional[Tensor], dhT: Optional[Tensor], dcT: Optional[Tensor]) -> tuple[Any, ...]:
        hs, cs, gates, ahat, rstd_a, chat, rstd_c, tc, w, gh, gc = ctx.saved_tensors
        T, B, H = tc.shape
        dtype = hs.dtype  # the forward's matmul dtype
        kernels = ctx.kernels

        def loop(d_out: Tensor, d_hT: Tensor, d_cT: Tensor) -> list[Tensor]:
            dz, da, dh0, dc0, dgh, dbh, dgc, dbc = kernels.backward(
                d_out, d_hT, d_cT, w, gh, gc, cs, gates, ahat, rstd_a, chat, rstd_c, tc)
            # After the loop: the recurrent weight gradient as one GEMM over all T*B rows,
            # dW_h = sum_t da_t^T h_{t-1}, in the matmuls' dtype (cuBLAS accumulates half
            # precision in float32), float32 at least otherwise.
            acc = torch.promote_types(da.dtype, dtype)
            dw = onednn.matmul_tn(da.flatten(0, 1).to(acc), hs[:-1].flatten(0, 1).to(acc))  # [4H, H]
            return [dz, dh0, dc0, dw, dgh, dbh, dgc, dbc]

        with torch.autocast(hs.device.type, enabled=False):
            d_out = hs.new_zeros((B, T, H)) if dout is None else dout.to(dtype).contiguous()
            d_hT = hs.new_zeros((B, H)) if dhT is None else dhT.to(dtype).contiguous()
            d_cT = cs.new_zeros((B, H)) if dcT is None else dcT.to(cs.dtype).contiguous()
            if ctx.graphs is None:
                dz, *grads = loop(d_out, d_hT, d_cT)
            else:
                dz, *grads = ctx.graphs.backward(ctx.lease, loop, [d_out, d_hT, d_cT])
        dz = dz.to(ctx.x_dtype)
        grads = [g.to(d) for g, d in zip(grads, ctx.param_dtypes, strict=True)]
        return (dz, *grads, None, None, None)


def _apply(
    path: RecurrencePath, xgb: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, ln_h_weight: Tensor,
    ln_h_bias: Tensor, ln_c_weight: Tensor, ln_c_bias: Tensor, eps: float, graphs: Optional[LoopGraphs],
) -> tuple[Tensor, Tensor, Tensor]:
    # Graphs only where autograd records (training): Function.forward itself runs without grad mode.
    training = torch.is_grad_enabled() and any(t.requires_grad for t in (xgb, w_hh))
    return FusedLNLSTM.apply(
        xgb, h0, c0, w_hh, ln_h_weight, ln_h_bias, ln_c_weight, ln_c_bias, eps, kernels_for(path),
        graphs if path == "triton" and training else None)


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
    ln_h_bias: Tensor, ln_c_weight: Tensor, ln_c_bias: Tensor, eps: float, graphs: Optional[LoopGraphs] = None,
) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One layer over time on a fused ``path``. The gate bias ``b`` is passed inside
    ``ln_h_bias`` (both are added to every step's pre-activations). ``graphs``: the layer's CUDA
    graphs (:mod:`rnn.loop_graphs`), used on the ``triton`` path."""
    run = _eager_apply if _eager_apply is not None and torch.compiler.is_compiling() else _apply
    out, h, c = run(path, xgb, h0, c0, w_hh, ln_h_weight, ln_h_bias, ln_c_weight, ln_c_bias, eps, graphs)
    return out, (h, c)
