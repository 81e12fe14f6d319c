"""Steady-state host allocation for the CPU ratios: no step pays page faults the other side does not.

Why: with glibc's default malloc, the bare ``nn.LSTM`` step (oneDNN) allocates two ~38 MB
workspaces per step at the seed shape. Chunks over the mmap threshold (at most 32 MB) are
``mmap``-ed and ``munmap``-ed every step, and freed heap tops are trimmed back to the kernel, so
each bare step took ~10,900 minor page faults (~43 MB zeroed by the kernel) against ~5,000-8,000
for the layer-norm step, whose tensors are small. On this 2-core VM that fault time is 8-30 ms of
a 115-155 ms bare step, and it swings with what the rest of the machine is doing: a
slow, fault-bound baseline flatters an engine/baseline ratio (``docs/benchmarks.md`` shows
174 samples/s for the same bare loop that runs 470-530/s on a quiet machine).

The harness therefore runs with: no heap trimming, the largest mmap threshold glibc allows, and
transparent huge pages for the chunks still mmapped (``glibc.malloc.hugetlb=1``, glibc >= 2.35).
The tunables must be in the environment before the process starts, so ``python -m bench``
re-executes itself once with them (:func:`reexec_with_tunables`). Both sides of every ratio run
in the same process, so both get the same allocator. With it the bare step takes ~40 faults and
the layer-norm step ~0 (``python -m bench -v`` logs faults per step for each side).
"""

from __future__ import annotations

import logging
import os
import platform
import resource
import sys
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: glibc caps the mmap threshold at 32 MB on 64-bit (HEAP_MAX_SIZE / 2).
TUNABLES = "glibc.malloc.hugetlb=1:glibc.malloc.trim_threshold=4294967296:glibc.malloc.mmap_threshold=33554432"
_MARK = "BENCH_ALLOC_REEXEC"


def _glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def reexec_with_tunables(argv: Sequence[str]) -> None:
    """Re-run ``python -m bench argv`` with :data:`TUNABLES` set, once; a no-op off glibc or if set."""
    if not _glibc() or os.environ.get(_MARK) or "GLIBC_TUNABLES" in os.environ:
        return
    env = dict(os.environ, GLIBC_TUNABLES=TUNABLES, **{_MARK: "1"})
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "bench", *argv], env)


def allocator_settings() -> str:
    """What the allocator runs with, for the printed header and the JSON."""
    if not _glibc():
        return f"{platform.system()} default allocator"
    default = "glibc defaults (page faults per step differ by side; see bench/alloc.py)"
    return os.environ.get("GLIBC_TUNABLES") or default


def minor_faults() -> int:
    """This process's minor page faults so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
