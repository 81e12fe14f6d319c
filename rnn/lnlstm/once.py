"""``@once``: a value made on first use and kept for the process (a compiled extension, an import).

Why not ``functools.cache``: these loaders are reached from a layer's ``forward``, which
``torch.compile`` traces, and dynamo ignores an ``lru_cache`` wrapper and traces the function inside
it (with a warning), so a cached build would run again inside a compile. Dynamo cannot enter the
lock here and breaks the graph before it instead, so the loader runs as plain Python. The lock also
makes concurrent first calls (threads of a Ray actor) wait for one build.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Generic, Optional, TypeVar

T = TypeVar("T")


class Once(Generic[T]):
    """``make()`` on the first call, under a lock; the same result on every later call.

    Pickled and deep-copied by reference, as a module-level function is: a layer that holds one
    (through :class:`rnn.lnlstm.LNLSTMPath`) copies without copying the process's kernels.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        functools.update_wrapper(self, make)  # __module__, __qualname__, __doc__: pickled as the function is
        self._name: str = getattr(make, "__qualname__", "")
        self._make = make
        self._lock = threading.Lock()
        self._made = False
        self._value: Optional[T] = None
        #: How long ``make()`` took (a build, or a load from a cache); None before the first call.
        self.seconds: Optional[float] = None

    def __call__(self) -> T:
        with self._lock:
            if not self._made:
                start = time.perf_counter()
                self._value = self._make()
                self.seconds = time.perf_counter() - start
                self._made = True
            return self._value  # type: ignore[return-value]  # T itself may be Optional

    def __reduce__(self) -> str:
        # A string: pickle and copy look the object up by this name in its module.
        return self._name


def once(make: Callable[[], T]) -> Once[T]:
    """Decorate a module-level, argument-free loader (see :class:`Once`)."""
    return Once(make)
