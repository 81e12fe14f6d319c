"""CUDA graphs of one layer-norm LSTM layer's time loops: one replay instead of ~2T launches each way.

On CUDA each timestep of :class:`rnn.lnlstm.fused.FusedLNLSTM` is a cuBLAS matmul and a Triton
kernel, each way, so a layer's forward and backward are about 4T launches, each paying Triton's
Python launcher (tens of microseconds). At small batches (the char-rnn shape: B 64, T 100) that is
most of the step. A :class:`LoopGraphs` (one per layer) captures the layer's forward loop and its
backward loop (with the LayerNorm-gradient reduction and the ``dW_h`` GEMM) as two CUDA graphs and
replays them, copying the varying inputs into the graphs' static buffers first.

Rules, and why:

- **One shape at a time.** A graph is keyed on its inputs' shapes and dtypes. A new key drops the
  layer's graphs (their memory goes back) and runs that call eagerly; the next call with the key
  captures. The eager call is the warm-up: Triton compiles and cuBLAS picks its kernels outside any
  capture. A throughput sweep over batch sizes thus holds one size's buffers at a time.
- **Training only.** The caller passes a layer's graphs only where autograd records
  (:meth:`rnn.lnlstm.LNLSTMPath.run_fused`); an evaluation under ``no_grad`` runs eagerly and
  leaves the graphs alone.
- **The saved tensors are the forward graph's static outputs,** overwritten by its next replay. So a
  forward replay marks the graphs busy until its backward has run (or its autograd graph is freed
  without a backward); a second forward while busy runs eagerly. Gradients leave the backward graph
  as copies.
- **Never fatal.** A capture that fails (a driver without graph support, a stream already capturing)
  logs one warning and the layer runs eagerly from then on. ``RNN_LNLSTM_GRAPHS=0`` turns graphs off
  (read by :meth:`rnn.lnlstm.LNLSTMPath.from_env`: a layer built with it has no ``LoopGraphs``).

Nothing here runs on the CPU: there every call takes the eager path, which the CPU tests cover (they
capture with a CPU stand-in for the graph, passed as ``LoopGraphs(capture=..., devices=("cpu",))``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Optional, Protocol

import torch
from torch import Tensor

from rnn.errors import one_line

log = logging.getLogger(__name__)

#: Set to 0 to run the Triton loops without CUDA graphs.
GRAPHS_SWITCH = "RNN_LNLSTM_GRAPHS"


class Captured(Protocol):
    """One captured call: ``replay(inputs)`` copies ``inputs`` into its static inputs, reruns the
    call and returns its static outputs."""

    def replay(self, inputs: Sequence[Tensor]) -> list[Tensor]: ...


#: Captures ``fn(*inputs)``: ``capture(fn, inputs)``.
Capture = Callable[[Callable[..., list[Tensor]], Sequence[Tensor]], Captured]


class CudaGraph:
    """One call captured in a CUDA graph: static inputs, the graph, its static outputs."""

    def __init__(self, fn: Callable[..., list[Tensor]], inputs: Sequence[Tensor]) -> None:
        self.statics = [t.clone() for t in inputs]
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: other threads of the process (a Ray actor's) may use CUDA meanwhile.
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = fn(*self.statics)

    def replay(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        for static, t in zip(self.statics, inputs, strict=True):
            if static.data_ptr() != t.data_ptr():
                static.copy_(t)
        self.graph.replay()
        return self.outputs


class _Lease:
    """Held by a graphed forward's autograd context: frees the graphs when that context goes,
    whether or not its backward ran."""

    def __init__(self, owner: LoopGraphs, generation: int) -> None:
        self.owner, self.generation = owner, generation

    def release(self) -> None:
        if self.owner._generation == self.generation:
            self.owner._busy = False

    def __del__(self) -> None:
        self.release()


def _key(tensors: Sequence[Tensor]) -> tuple[Any, ...]:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class LoopGraphs:
    """The CUDA graphs of one layer's forward and backward loops (see the module doc).

    ``capture`` captures a call (:class:`CudaGraph`); ``devices``: the device types whose calls
    are captured (CUDA only; the tests capture CPU calls with a stand-in).
    """

    def __init__(self, capture: Capture = CudaGraph, devices: tuple[str, ...] = ("cuda",)) -> None:
        self.capture, self.devices = capture, devices
        self._key: Optional[tuple[Any, ...]] = None
        self._fwd: Optional[Captured] = None
        self._bwd: Optional[Captured] = None
        self._bwd_warm = False
        self._busy = False
        self._generation = 0
        self.failed: Optional[str] = None  # why capturing failed; the layer then runs eagerly

    # A model copy (deepcopy, pickling) starts without graphs: they hold device memory and streams.
    def __deepcopy__(self, memo: dict[int, Any]) -> LoopGraphs:
        return LoopGraphs(self.capture, self.devices)

    def __getstate__(self) -> dict[str, Any]:
        return {"capture": self.capture, "devices": self.devices}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capture"], state["devices"])  # type: ignore[misc]

    def _drop(self) -> None:
        self._fwd = self._bwd = None
        self._bwd_warm = False

    def _fail(self, e: Exception) -> None:
        self.failed = one_line(e)
        self._drop()
        log.warning("capturing the layer-norm LSTM's loops in a CUDA graph failed (%s); this layer runs "
                    "them without graphs (set %s=0 to skip graphs)", self.failed, GRAPHS_SWITCH)

    def forward(
        self, fn: Callable[..., list[Tensor]], inputs: Sequence[Tensor],
    ) -> tuple[list[Tensor], Optional[_Lease]]:
        """``fn(*inputs)`` (the forward loop), replayed from a graph where the rules allow; the lease
        (None for an eager call) goes to the backward."""
        device = inputs[0].device
        usable = (self.failed is None and not self._busy and device.type in self.devices
                  and not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()))
        if not usable:
            return fn(*inputs), None
        key = _key(inputs)
        if key != self._key:  # a new shape: this call is the eager warm-up
            self._drop()
            self._key = key
            return fn(*inputs), None
        if self._fwd is None:
            try:
                self._fwd = self.capture(fn, inputs)
            except Exception as e:  # noqa: BLE001 (any capture failure: run eagerly)
                self._fail(e)
                return fn(*inputs), None
        outputs = self._fwd.replay(inputs)
        self._generation += 1
        self._busy = True
        return outputs, _Lease(self, self._generation)

    def backward(
        self, lease: Optional[_Lease], fn: Callable[..., list[Tensor]], inputs: Sequence[Tensor],
    ) -> list[Tensor]:
        """``fn(*inputs)`` (the backward loop over the forward's saved tensors), replayed from a graph
        when the forward was; the results are the caller's own tensors either way."""
        if lease is None or self._fwd is None or lease.generation != self._generation:
            if lease is None and self._fwd is None and self._key is not None:
                self._bwd_warm = True  # the eager warm-up's backward: Triton's backward kernels are built
            return fn(*inputs)
        try:
            if not self._bwd_warm:  # the forward was captured before any backward ran with this key
                self._bwd_warm = True
                return fn(*inputs)
            if self._bwd is None:
                try:
                    self._bwd = self.capture(fn, inputs)
                except Exception as e:  # noqa: BLE001
                    self._fail(e)
                    return fn(*inputs)
            return [t.clone() for t in self._bwd.replay(inputs)]
        finally:
            lease.release()
