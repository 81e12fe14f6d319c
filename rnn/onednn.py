"""Float32 CPU matmuls through oneDNN or MKL, with autograd: ``linear(x, w)`` and ``matmul_tn(a, b)``.

Why: on the CPU, ``aten::mm`` in float32 goes to MKL's sgemm, while ``nn.LSTM`` runs on oneDNN, and
neither wins on every CPU. On the dev VM's AMD EPYC (torch 2.13) MKL took 11.8 ms for
``[1600, 192] @ [192, 1536]`` and oneDNN 4.1 ms; at the recurrent shape ``[64, 384] @ [384, 1536]``,
745 us against 352 us (timed side by side with ``torch.set_num_threads(1)``). On an Intel Xeon
(Sapphire Rapids, 1 thread) MKL was the faster one for the large GEMMs: 13.4 ms against 18.2 ms for
the weight gradient ``[1600, 1536]^T [1600, 384]`` (oneDNN copies the transposed operand first),
5.5 against 6.8 ms for the input projection ``[1600, 192] @ [192, 1536]``. So the layer-norm LSTM's
large GEMMs outside its time loop (the input projection, its input and weight gradients, the
recurrent weight gradient) time both once per shape and thread count in a process and keep the
faster (:func:`_tuned`, about 8 extra GEMMs); the per-step ``W_h h`` inside the C++ loop stays on
oneDNN with its weight reordered once per loop. oneDNN's op is the one Inductor's CPU freezing
uses, ``mkldnn::_linear_pointwise``; it has no autograd of its own, and the Function here supplies it.

:func:`available` is False where the op is missing (a build without oneDNN); callers then use
``F.linear``. Only float32 goes this way: float64 (the checking dtype) stays on ``aten::mm``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor


def available() -> bool:
    """Whether this torch build has the oneDNN linear op."""
    return hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_ok(x: Tensor) -> bool:
    # Never inside a graph torch.compile traces: Inductor cannot lower this op outside its freezing
    # pass (a LoweringException in torch 2.13, see docs/benchmarks.md). After eager_under_compile()
    # linear() does not get here while tracing; without it, Inductor gets a plain matmul.
    return x.device.type == "cpu" and x.dtype == torch.float32 and available() and not torch.compiler.is_compiling()


def _onednn_linear(x: Tensor, w: Tensor) -> Tensor:
    """``x [M, K] @ w[N, K]^T`` on oneDNN (it copies a non-contiguous ``x`` first)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


#: The tuned choice per (what, M, N, K, threads): True for oneDNN, False for ``aten::mm``.
_choice: dict[tuple[str, int, int, int, int], bool] = {}


def _faster(onednn: Callable[[], Tensor], mm: Callable[[], Tensor]) -> bool:
    """Whether ``onednn`` runs faster than ``mm`` here: timed alternately, the best of three each
    after a warm-up round (about 8 GEMMs, once per shape and process)."""
    best = {True: float("inf"), False: float("inf")}
    for rep in range(4):
        for side, run in ((True, onednn), (False, mm)):
            start = time.perf_counter()
            run()
            if rep:  # the first round warms both up
                best[side] = min(best[side], time.perf_counter() - start)
    return best[True] <= best[False]


def _tuned(what: str, m: int, n: int, k: int, onednn: Callable[[], Tensor], mm: Callable[[], Tensor]) -> Tensor:
    """``onednn()`` or ``mm()`` (the same product), whichever this machine runs faster for the shape."""
    key = (what, m, n, k, torch.get_num_threads())
    choice = _choice.get(key)
    if choice is None:
        choice = _choice[key] = _faster(onednn, mm)
    return onednn() if choice else mm()


def _linear(x: Tensor, w: Tensor) -> Tensor:
    """``x [M, K] @ w[N, K]^T``: on float32 CPU tensors oneDNN or ``aten::mm``, whichever is faster
    here (:func:`_tuned`); elsewhere ``aten::mm``."""
    if not _onednn_ok(x):
        return x @ w.t()
    return _tuned("nt", x.shape[0], w.shape[0], x.shape[1], lambda: _onednn_linear(x, w), lambda: x @ w.t())


def _matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x [M, K] @ w[K, N]``: an input gradient through a ``[N, K]`` weight."""
    if not _onednn_ok(x):
        return x @ w
    return _tuned("nn", x.shape[0], w.shape[1], x.shape[1], lambda: _onednn_linear(x, w.t().contiguous()),
                  lambda: x @ w)


def matmul_tn(a: Tensor, b: Tensor) -> Tensor:
    """``a^T @ b`` for ``a [M, N]``, ``b [M, K]``: a weight gradient summed over M rows."""
    if not _onednn_ok(a):
        return a.t() @ b
    return _tuned("tn", a.shape[1], b.shape[1], a.shape[0], lambda: _onednn_linear(a.t(), b.t()),
                  lambda: torch.mm(a.t(), b))


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(x, w)
        return _linear(x, w)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, w = ctx.saved_tensors
        dy = dy.contiguous()
        dx = _matmul(dy, w) if ctx.needs_input_grad[0] else None
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
