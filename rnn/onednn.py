"""Float32 CPU matmuls through oneDNN, with autograd: ``linear(x, w)`` and ``matmul_tn(a, b)``.

Why: on the CPU, ``aten::mm`` in float32 goes to MKL's sgemm, while ``nn.LSTM`` runs on oneDNN.
On the dev VM's AMD EPYC (torch 2.13) MKL took 11.8 ms for ``[1600, 192] @ [192, 1536]`` and
oneDNN 4.1 ms; at the recurrent shape ``[64, 384] @ [384, 1536]``, 745 us against 352 us (timed
side by side with ``torch.set_num_threads(1)``). The layer-norm LSTM's own GEMMs (the input
projection, the per-step ``W_h h``, the weight gradients) therefore go through the op Inductor's
CPU freezing uses, ``mkldnn::_linear_pointwise``. It has no autograd of its own; the Function
here supplies it.

:func:`available` is False where the op is missing (a build without oneDNN); callers then use
``F.linear``. Only float32 goes this way: float64 (the checking dtype) stays on ``aten::mm``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor


def available() -> bool:
    """Whether this torch build has the oneDNN linear op."""
    return hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _linear(x: Tensor, w: Tensor) -> Tensor:
    """``x [M, K] @ w[N, K]^T`` on oneDNN (float32) or ``aten::mm``."""
    # Never inside a graph torch.compile traces: Inductor cannot lower this op outside its freezing
    # pass (a LoweringException in torch 2.13, see docs/benchmarks.md). After eager_under_compile()
    # linear() does not get here while tracing; without it, Inductor gets a plain matmul.
    if x.device.type == "cpu" and x.dtype == torch.float32 and available() and not torch.compiler.is_compiling():
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return x @ w.t()


def matmul_tn(a: Tensor, b: Tensor) -> Tensor:
    """``a^T @ b`` for ``a [M, N]``, ``b [M, K]``: a weight gradient summed over M rows."""
    return _linear(a.t(), b.t())  # oneDNN takes the transposed views (no copy on our side)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return _linear(x, w)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        dy = dy.contiguous()
        dx = _linear(dy, w.t().contiguous()) if ctx.needs_input_grad[0] else None
        dw = matmul_tn(dy, x) if ctx.needs_input_grad[1] else None
        return dx, dw


def _linear_nd(x: Tensor, w: Tensor) -> Tensor:
    shape = x.shape
    y = _Linear.apply(x.reshape(-1, shape[-1]), w)
    return y.reshape(*shape[:-1], w.shape[0])


#: ``_linear_nd`` ``torch.compiler.disable``-d, so that under ``torch.compile`` it runs eagerly on
#: oneDNN (a graph break). Made by :func:`eager_under_compile` (``rnn.compile`` calls it before
#: compiling), not at import: ``torch.compiler.disable`` imports dynamo, about 1 s.
_eager_linear: Optional[Any] = None


def eager_under_compile() -> None:
    """Make :func:`linear` a graph break that runs on oneDNN under ``torch.compile`` (idempotent)."""
    global _eager_linear
    if _eager_linear is None:
        _eager_linear = torch.compiler.disable(_linear_nd)


def linear(x: Tensor, w: Tensor) -> Tensor:
    """``x [..., K] @ w[N, K]^T`` (no bias), differentiable, on oneDNN for float32 CPU tensors."""
    if _eager_linear is not None and torch.compiler.is_compiling():
        return _eager_linear(x, w)
    return _linear_nd(x, w)
