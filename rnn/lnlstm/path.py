"""Which implementation a layer-norm LSTM layer runs: :class:`LNLSTMPath`, made when the layer is built.

The path of one call (:meth:`LNLSTMPath.resolve`; device, dtype and autocast state are the call's):

- ``fused-cpu``: CPU tensors in float32/float64, no autocast, and the C++ kernels built
  (:mod:`rnn.lnlstm.cpu`).
- ``triton``: CUDA tensors in float32/bfloat16/float16, Triton importable
  (:mod:`rnn.lnlstm.triton_kernels`), and the kernels' first-use self-check passed
  (:class:`CheckedKernels`).
- ``torch``: anything else (MPS, autocast on the CPU, no compiler): the PyTorch loop
  (:mod:`rnn.lnlstm.reference`), differentiated by autograd.

What a layer may use is fixed when it is built, by :meth:`LNLSTMPath.from_env`: ``recurrence:
torch`` uses the loop only; otherwise ``RNN_LNLSTM_CPP=0``, ``RNN_LNLSTM_TRITON=0`` and
``RNN_LNLSTM_GRAPHS=0`` each turn one implementation off. Nothing here is switched later: the
C++ extension and the Triton kernels (with their self-check outcomes) are loaded once per process
by their loaders (:mod:`rnn.lnlstm.once`), and the ``torch.compile`` graph breaks
(:class:`CompileBreaks`) are given to a model's layers by :func:`rnn.lnlstm.eager_under_compile`.

Never fatal: Triton compiles a kernel at its first launch, for each hidden-size block and dtype,
and a compiler or driver failure there would otherwise end the trial. So the first time a process
would use the ``triton`` path for a (device, dtype, block), :class:`CheckedKernels` runs a tiny
forward and backward against the PyTorch loop; on an exception or a mismatch it logs one warning
naming the cause and the process uses the ``torch`` path for that key from then on (the trial row's
``recurrence`` then says ``torch``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal, Optional

import torch
from torch import Tensor

from rnn.lnlstm import onednn
from rnn.lnlstm.cpu import CPP_SWITCH
from rnn.lnlstm.cpu import load as load_cpu
from rnn.lnlstm.fused import fused_recurrence
from rnn.lnlstm.kernels import Kernels
from rnn.lnlstm.loop_graphs import GRAPHS_SWITCH, LoopGraphs
from rnn.lnlstm.once import once
from rnn.lnlstm.reference import LSTMState
from rnn.lnlstm.self_check import self_check

log = logging.getLogger(__name__)

RecurrencePath = Literal["fused-cpu", "triton", "torch"]
#: What a layer may be asked to use: ``auto`` picks the fastest available path.
RecurrenceChoice = Literal["auto", "torch"]
RECURRENCE_CHOICES: tuple[str, ...] = ("auto", "torch")

#: Set to 0 to never use the Triton kernels (CUDA then runs the PyTorch loop), as ``RNN_LNLSTM_CPP=0``
#: does for the C++ kernels on the CPU.
TRITON_SWITCH = "RNN_LNLSTM_TRITON"

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _block(hidden_size: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, hidden_size))))  # triton.next_power_of_2


class CheckedKernels:
    """Kernels used only where their :func:`rnn.lnlstm.self_check.self_check` passed.

    The check runs once per (device, dtype, hidden-size block), the unit Triton compiles;
    ``outcomes`` keeps each result (None: passed, else why not). A failure is logged once, as a
    warning naming the cause.
    """

    def __init__(self, kernels: Kernels) -> None:
        self.kernels = kernels
        self.outcomes: dict[tuple[str, torch.dtype, int], Optional[str]] = {}

    def ready(self, device: torch.device, dtype: torch.dtype, hidden_size: int) -> bool:
        """Whether layers of ``hidden_size`` in ``dtype`` on ``device`` may run these kernels."""
        key = (str(device), dtype, _block(hidden_size))
        if key not in self.outcomes:
            with torch.autocast(device.type, enabled=False):
                reason = self_check(self.kernels, device, dtype, hidden_size)
            self.outcomes[key] = reason
            if reason is not None:
                log.warning("the layer-norm LSTM's Triton kernels failed their self-check on %s (%s, hidden %d): %s; "
                            "using the PyTorch loop there (set %s=0 to skip Triton)",
                            device, str(dtype).removeprefix("torch."), hidden_size, reason, TRITON_SWITCH)
        return self.outcomes[key] is None


@once
def load_triton() -> Optional[CheckedKernels]:
    """The Triton kernels behind their self-check, or None where Triton does not import (asked
    once per process; the outcomes of the checks are kept for the process too)."""
    try:
        from rnn.lnlstm import triton_kernels
    except Exception as e:  # noqa: BLE001 (ImportError, or a Triton that fails to initialise)
        log.info("Triton unavailable (%s): the layer-norm LSTM runs the PyTorch loop on CUDA", e)
        return None
    return CheckedKernels(triton_kernels.kernels())


def _run_fused(
    path: LNLSTMPath, kind: RecurrencePath, xgb: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor,
    ln_h_weight: Tensor, ln_h_bias: Tensor, ln_c_weight: Tensor, ln_c_bias: Tensor, eps: float,
    graphs: Optional[LoopGraphs],
) -> tuple[Tensor, LSTMState]:
    return fused_recurrence(path.kernels(kind), xgb, h0, c0, w_hh, ln_h_weight, ln_h_bias, ln_c_weight, ln_c_bias,
                            eps, graphs if kind == "triton" else None)


@dataclass(frozen=True)
class CompileBreaks:
    """The fused call and the oneDNN input projection as ``torch.compile`` graph breaks.

    Under ``torch.compile`` they run eagerly between compiled pieces: dynamo cannot trace the C++
    or Triton launches, and Inductor failed to lower the oneDNN op. :func:`compile_breaks` makes
    them when a model is about to be compiled, not at import: ``torch.compiler.disable`` imports
    dynamo, about 1.5 s.
    """

    fused: Callable[..., tuple[Tensor, LSTMState]]
    linear: Callable[[Tensor, Tensor], Tensor]

    def __reduce__(self) -> tuple[Callable[[], CompileBreaks], tuple[()]]:
        return compile_breaks, ()  # the wrappers do not pickle; the process's own are rebuilt


@functools.cache
def compile_breaks() -> CompileBreaks:
    """This process's :class:`CompileBreaks` (made on the first call)."""
    return CompileBreaks(fused=torch.compiler.disable(_run_fused), linear=torch.compiler.disable(onednn.linear))


@dataclass(frozen=True)
class LNLSTMPath:
    """Which implementations a layer-norm LSTM layer may run. The layer holds one, made when it is
    built (usually by :meth:`from_env`), and asks it on every call which path to take.

    Args:
        cpu: loads the C++ kernels (:func:`rnn.lnlstm.cpu.load`); None: the PyTorch loop on the CPU.
        triton: loads the Triton kernels (:func:`load_triton`); None: the PyTorch loop on CUDA.
        graphs: capture the Triton loops in CUDA graphs (the layer then holds a
            :class:`rnn.lnlstm.loop_graphs.LoopGraphs`).
        compile_breaks: the graph breaks to run under ``torch.compile``
            (:func:`rnn.lnlstm.eager_under_compile` sets them); None: calls are traced as they are.
    """

    cpu: Optional[Callable[[], Optional[Kernels]]] = load_cpu
    triton: Optional[Callable[[], Optional[CheckedKernels]]] = load_triton
    graphs: bool = True
    compile_breaks: Optional[CompileBreaks] = None

    @classmethod
    def from_env(cls, recurrence: str = "auto") -> LNLSTMPath:
        """``recurrence``: ``auto`` (every fused implementation the environment allows, see the
        module doc; the switches are read now) or ``torch`` (the PyTorch loop only)."""
        if recurrence not in RECURRENCE_CHOICES:
            raise ValueError(f"recurrence must be one of {', '.join(RECURRENCE_CHOICES)} (got {recurrence!r})")
        if recurrence == "torch":
            return cls(cpu=None, triton=None, graphs=False)

        def on(switch: str) -> bool:
            return os.environ.get(switch, "1") != "0"

        if not on(CPP_SWITCH):
            log.debug("%s=0: the layer-norm LSTM uses the PyTorch loop on the CPU", CPP_SWITCH)
        return cls(cpu=load_cpu if on(CPP_SWITCH) else None, triton=load_triton if on(TRITON_SWITCH) else None,
                   graphs=on(GRAPHS_SWITCH))

    def resolve(self, device: torch.device, dtype: torch.dtype, hidden_size: int) -> RecurrencePath:
        """The path a layer of ``hidden_size`` on ``device`` with ``dtype`` inputs takes (autocast
        state is read now). ``dtype`` is the precision: under autocast, its dtype. The first call
        for a device may build the C++ kernels or run the Triton self-check."""
        if device.type == "cpu":
            if (self.cpu is not None and dtype in _CPU_DTYPES and not torch.is_autocast_enabled("cpu")
                    and self.cpu() is not None):
                return "fused-cpu"
        elif device.type == "cuda" and self.triton is not None:
            if torch.is_autocast_enabled("cuda"):
                dtype = torch.get_autocast_dtype("cuda")
            if dtype in _CUDA_DTYPES:
                checked = self.triton()
                if checked is not None and checked.ready(device, dtype, hidden_size):
                    return "triton"
        return "torch"

    def kernels(self, path: RecurrencePath) -> Kernels:
        """The kernels of a fused ``path`` that :meth:`resolve` chose."""
        if path == "fused-cpu" and self.cpu is not None:
            cpu = self.cpu()
            if cpu is not None:
                return cpu
        if path == "triton" and self.triton is not None:
            checked = self.triton()
            if checked is not None:
                return checked.kernels
        raise ValueError(f"no fused kernels for path {path!r} here (expected a path resolve() chose: fused-cpu "
                         "or triton)")

    def run_fused(
        self, path: RecurrencePath, xgb: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, ln_h_weight: Tensor,
        ln_h_bias: Tensor, ln_c_weight: Tensor, ln_c_bias: Tensor, eps: float, graphs: Optional[LoopGraphs] = None,
    ) -> tuple[Tensor, LSTMState]:
        """One layer over time on a fused ``path`` (see :func:`rnn.lnlstm.fused.fused_recurrence`;
        ``graphs`` are used on the ``triton`` path only). A graph break under ``torch.compile``
        where :attr:`compile_breaks` is set."""
        breaks = self.compile_breaks
        run = breaks.fused if breaks is not None and torch.compiler.is_compiling() else _run_fused
        return run(self, path, xgb, h0, c0, w_hh, ln_h_weight, ln_h_bias, ln_c_weight, ln_c_bias, eps, graphs)

    def input_projection(self, x: Tensor, w: Tensor) -> Tensor:
        """``x [..., K] @ w[N, K]^T`` for the ``fused-cpu`` path: on oneDNN or MKL, whichever this
        machine runs faster (:mod:`rnn.lnlstm.onednn`); a graph break under ``torch.compile`` where
        :attr:`compile_breaks` is set."""
        breaks = self.compile_breaks
        if breaks is not None and torch.compiler.is_compiling():
            return breaks.linear(x, w)
        return onednn.linear(x, w)

    def with_compile_breaks(self) -> LNLSTMPath:
        """This path, with this process's :class:`CompileBreaks`."""
        return replace(self, compile_breaks=compile_breaks())
