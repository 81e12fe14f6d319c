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
faster (:class:`Tuner`, about 8 extra GEMMs); the per-step ``W_h h`` inside the C++ loop stays on
oneDNN with its weight reordered once per loop. oneDNN's op is the one Inductor's CPU freezing
uses, ``mkldnn::_linear_pointwise``; it has no autograd of its own, and the Function here supplies it.

:func:`available` is False where the op is missing (a build without oneDNN); callers then use
``F.linear``. Only float32 goes this way: float64 (the checking dtype) stays on ``aten::mm``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


def available() -> bool:
    """Whether this torch build has the oneDNN linear op."""
    return hasattr(torch.ops, "mkldnn") and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_ok(x: Tensor) -> bool:
    # Never inside a graph torch.compile traces: Inductor cannot lower this op outside its freezing
    # pass (a LoweringException in torch 2.13, see docs/benchmarks.md). Under a layer prepared by
    # rnn.lnlstm.eager_under_compile, linear() runs as a graph break and does not get here while
    # tracing; without it, Inductor gets a plain matmul.
    return x.device.type == "cpu" and x.dtype == torch.float32 and available() and not torch.compiler.is_compiling()


def _onednn_linear(x: Tensor, w: Tensor) -> Tensor:
    """``x [M, K] @ w[N, K]^T`` on oneDNN (it copies a non-contiguous ``x`` first)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


Key = tuple[str, int, int, int, int]


class Tuner:
    """Times oneDNN against ``aten::mm`` once per product shape and thread count, and keeps the faster.

    ``choice``: the tuned choice per (what, M, N, K, threads), True for oneDNN. :func:`tuner` is the
    process's; the products below take float32 CPU tensors where :func:`available` (callers check).
    """

    def __init__(self) -> None:
        self.choice: dict[Key, bool] = {}

    def faster(self, onednn: Callable[[], Tensor], mm: Callable[[], Tensor]) -> bool:
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

    def run(self, what: str, m: int, n: int, k: int, onednn: Callable[[], Tensor], mm: Callable[[], Tensor]) -> Tensor:
        """``onednn()`` or ``mm()`` (the same product), whichever this machine runs faster for the shape."""
        key = (what, m, n, k, torch.get_num_threads())
        choice = self.choice.get(key)
        if choice is None:
            choice = self.choice[key] = self.faster(onednn, mm)
        return onednn() if choice else mm()

    def linear(self, x: Tensor, w: Tensor) -> Tensor:
        """``x [M, K] @ w[N, K]^T``."""
        return self.run("nt", x.shape[0], w.shape[0], x.shape[1], lambda: _onednn_linear(x, w), lambda: x @ w.t())

    def matmul(self, x: Tensor, w: Tensor) -> Tensor:
        """``x [M, K] @ w[K, N]``: an input gradient through a ``[N, K]`` weight."""
        return self.run("nn", x.shape[0], w.shape[1], x.shape[1], lambda: _onednn_linear(x, w.t().contiguous()),
                        lambda: x @ w)

    def matmul_tn(self, a: Tensor, b: Tensor) -> Tensor:
        """``a^T @ b`` for ``a [M, N]``, ``b [M, K]``: a weight gradient summed over M rows."""
        return self.run("tn", a.shape[1], b.shape[1], a.shape[0], lambda: _onednn_linear(a.t(), b.t()),
                        lambda: torch.mm(a.t(), b))


@functools.cache
def tuner() -> Tuner:
    """This process's :class:`Tuner`: each shape is timed once per process."""
    return Tuner()


def _linear(x: Tensor, w: Tensor) -> Tensor:
    """``x [M, K] @ w[N, K]^T``: on float32 CPU tensors oneDNN or ``aten::mm``, whichever is faster
    here (:class:`Tuner`); elsewhere ``aten::mm``."""
    return tuner().linear(x, w) if _onednn_ok(x) else x @ w.t()


def _matmul(x: Tensor, w: Tensor) -> Tensor:
    """``x [M, K] @ w[K, N]``: an input gradient through a ``[N, K]`` weight."""
    return tuner().matmul(x, w) if _onednn_ok(x) else x @ w


def matmul_tn(a: Tensor, b: Tensor) -> Tensor:
    """``a^T @ b`` for ``a [M, N]``, ``b [M, K]``: a weight gradient summed over M rows."""
    # _onednn_ok first: it is False while torch.compile traces, so dynamo never meets tuner()'s cache.
    return tuner().matmul_tn(a, b) if _onednn_ok(a) else a.t() @ b


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


def linear(x: Tensor, w: Tensor) -> Tensor:
    """``x [..., K] @ w[N, K]^T`` (no bias), differentiable, on oneDNN for float32 CPU tensors."""
    shape = x.shape
    y = _Linear.apply(x.reshape(-1, shape[-1]), w)
    return y.reshape(*shape[:-1], w.shape[0])
