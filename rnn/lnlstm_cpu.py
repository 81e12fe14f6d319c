"""The CPU kernels of the fused layer-norm LSTM recurrence: a small C++ extension, built on first use.

``load()`` compiles ``rnn/csrc/lnlstm_cpu.cpp`` with :func:`torch.utils.cpp_extension.load`
(g++ and ninja; about 30-40 s once on the 2-core dev VM) into torch's extension cache
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``), keyed by the source's hash, so
later processes, Ray actors included, load it in well under a second. If it cannot be built
(no compiler, no ninja, a read-only cache, ``RNN_LNLSTM_CPP=0``), ``load()`` logs one warning and
returns None, and the caller runs the PyTorch loop instead.

Concurrent first builds (several actors at once) are serialised by the file lock that
``cpp_extension`` takes in the build folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Optional

log = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "lnlstm_cpu.cpp"
#: Set to 0 to never build or use the extension (the PyTorch loop runs instead).
ENV_SWITCH = "RNN_LNLSTM_CPP"

_lock = threading.Lock()
_state: dict[str, object] = {}  # "module": the loaded module or None; "seconds": load time


def _cpu_tag() -> str:
    """A short hash of the CPU's flags: the build uses -march=native, and a cache folder shared by
    machines with different CPUs (a shared home on a cluster) must not hand one's build to another."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    import platform

    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


def load() -> Optional[ModuleType]:
    """The compiled extension, building it on first use; None if it cannot be built (logged once)."""
    with _lock:
        if "module" in _state:
            return _state["module"]  # type: ignore[return-value]
        module: Optional[ModuleType] = None
        start = time.perf_counter()
        if os.environ.get(ENV_SWITCH, "1") == "0":
            log.info("%s=0: the layer-norm LSTM uses the PyTorch loop on the CPU", ENV_SWITCH)
        else:
            try:
                from torch.utils.cpp_extension import load as build

                # -O3 and the host's vector ISA (the cache folder is per CPU, see _cpu_tag): the
                # row loops vectorise. -fno-trapping-math (as PyTorch's own build) lets GCC
                # vectorise floor and the float/int conversions in the exp; no -ffast-math, so
                # NaN and inf propagate as in PyTorch.
                module = build(
                    name=f"rnn_lnlstm_cpu_{_cpu_tag()}",
                    sources=[str(SOURCE)],
                    extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math"],
                    verbose=False,
                )
            except Exception as e:  # noqa: BLE001 (any build failure means: use the PyTorch loop)
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                log.warning("layer-norm LSTM C++ kernels unavailable, using the PyTorch loop: %s", first)
        _state["module"] = module
        _state["seconds"] = time.perf_counter() - start
        if module is not None:
            log.info("layer-norm LSTM C++ kernels ready in %.1fs", _state["seconds"])
        return module


def load_seconds() -> Optional[float]:
    """How long :func:`load` took in this process (a build, or a load from the cache); None before."""
    value = _state.get("seconds")
    return float(value) if isinstance(value, float) else None
