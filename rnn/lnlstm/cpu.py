"""The CPU kernels of the fused layer-norm LSTM recurrence: a small C++ extension, built on first use.

:func:`load` compiles ``csrc/lnlstm_cpu.cpp`` (next to this file) with
:func:`torch.utils.cpp_extension.load` (g++ and ninja; about 30-40 s once on the 2-core dev VM)
into torch's extension cache (``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``),
in a folder of this checkout's, torch's and CPU's (:func:`_build_tag`), so later processes, Ray
actors included, load it in well under a second. If it cannot be built (no compiler, no ninja, a
read-only cache), :func:`build` logs one warning and returns None, and the layer runs the PyTorch
loop instead. ``RNN_LNLSTM_CPP=0`` (:data:`CPP_SWITCH`, read by
:meth:`rnn.lnlstm.LNLSTMPath.from_env`) keeps a layer from asking.

Concurrent first builds (several actors at once) are serialised by the file lock that
``cpp_extension`` takes in the build folder.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

from torch import Tensor

from rnn.lnlstm.kernels import KernelGrads, SavedTensors
from rnn.lnlstm.once import once

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "lnlstm_cpu.cpp"
#: Set to 0 to never build or use the extension (the PyTorch loop runs instead).
CPP_SWITCH = "RNN_LNLSTM_CPP"


class CppKernels:
    """The :class:`rnn.lnlstm.kernels.Kernels` contract over the compiled extension.

    The extension returns plain lists of tensors; this is the one place they are named
    (:class:`SavedTensors`, :class:`KernelGrads` own the order).
    """

    def __init__(self, extension: ModuleType) -> None:
        self.extension = extension

    def forward(self, xgb: Tensor, h0: Tensor, c0: Tensor, w: Tensor, gh: Tensor, bh: Tensor,
                gc: Tensor, bc: Tensor, eps: float) -> SavedTensors:
        return SavedTensors._make(self.extension.forward(xgb, h0, c0, w, gh, bh, gc, bc, eps))

    def backward(self, dout: Tensor, dhT: Tensor, dcT: Tensor, w: Tensor, gh: Tensor, gc: Tensor,
                 saved: SavedTensors) -> KernelGrads:
        s = saved
        return KernelGrads._make(self.extension.backward(
            dout, dhT, dcT, w, gh, gc, s.cs, s.gates, s.ahat, s.rstd_a, s.chat, s.rstd_c, s.tc))

    def gemm_backend(self) -> str:
        """What the per-step matmuls run on for float32: ``onednn`` or ``mm``."""
        return str(self.extension.gemm_backend())


def _build_tag(source: Path) -> str:
    """A short hash of what a build is only good for: the CPU's flags (the build uses -march=native,
    and a cache folder shared by machines with different CPUs, a shared home on a cluster, must
    not hand one's build to another), torch (its headers and libraries) and the source's path.
    Two checkouts or virtual environments on one machine get a folder each: in a shared one, the
    other's compiler command makes ninja rebuild it (30-40 s) in every process that loads it."""
    import torch

    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    key = f"{platform.machine()} {flags} {torch.__version__} {Path(torch.__file__).parent} {source.resolve()}"
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def build(source: Path = SOURCE) -> Optional[CppKernels]:
    """Build ``source`` (or load it from torch's extension cache); None, with one warning, if it
    cannot be built. Each call is one attempt: :func:`load` is the process's."""
    try:
        from torch.utils.cpp_extension import load as cpp_load

        # -O3 and the host's vector ISA (the cache folder is per CPU, see _build_tag): the
        # row loops vectorise. -fno-trapping-math (as PyTorch's own build) lets GCC
        # vectorise floor and the float/int conversions in the exp; no -ffast-math, so
        # NaN and inf propagate as in PyTorch.
        extension = cpp_load(
            name=f"rnn_lnlstm_cpu_{_build_tag(source)}",
            sources=[str(source)],
            extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"],
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 (any build failure means: use the PyTorch loop)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("layer-norm LSTM C++ kernels unavailable, using the PyTorch loop: %s", first)
        return None
    return CppKernels(extension)


@once
def load() -> Optional[CppKernels]:
    """The C++ kernels, built on the first call in this process and kept; None if they cannot be built."""
    start = time.perf_counter()
    kernels = build(SOURCE)
    if kernels is not None:
        log.info("layer-norm LSTM C++ kernels ready in %.1fs", time.perf_counter() - start)
    return kernels


def load_seconds() -> Optional[float]:
    """How long :func:`load` took in this process (a build, or a load from the cache); None before."""
    return load.seconds
