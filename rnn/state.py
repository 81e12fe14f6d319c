"""A recurrent stack's state and the one way to transform it.

``(h, c)`` for LSTMs, ``h`` for GRU, RNN and the min cells; each tensor ``[num_layers, B, H]``.
Code that moves, cuts or slices a state maps a function over its tensors with :func:`map_state`
instead of branching on its form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

from torch import Tensor

#: A stack's recurrent state: ``(h, c)`` for LSTMs, ``h`` for GRU/RNN and the min cells; each ``[num_layers, B, H]``.
RecurrentState = Union[Tensor, tuple[Tensor, Tensor]]


def map_state(state: RecurrentState, fn: Callable[[Tensor], Tensor]) -> RecurrentState:
    """``fn`` applied to each tensor of ``state``, its form kept: ``(fn(h), fn(c))`` or ``fn(h)``.

    A pair stored as a list (as a loaded checkpoint may hold it) comes back as a tuple.
    """
    if isinstance(state, (tuple, list)):
        h, c = state
        return (fn(h), fn(c))
    return fn(state)
