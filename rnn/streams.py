"""A token split read as contiguous streams, ``seq_len`` tokens at a time (truncated BPTT).

The split's first ``rows * n + 1`` tokens are cut into ``rows`` streams of ``n`` targets each,
stream ``b`` being ``tokens[b*n : (b+1)*n + 1]`` (a stream's last target is the next one's first
input). A window at ``position`` p is every stream's ``tokens[b*n + p : b*n + p + seq_len + 1]``,
so the window after it (p + seq_len) continues each row exactly where it stopped, and a recurrent
state carried from one to the next has read all of its stream before the window.

:class:`TrainStreams` serves the training steps of ``train.stateful`` (one window per step, a new
pass over the streams at a random phase when they run out); :func:`stream_windows` the
validation pass of ``data.val_mode: stream``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch
from torch import Tensor

from rnn.data_check import check_streams


def stream_length(tokens: int, rows: int) -> int:
    """Targets per stream when ``tokens`` ids are cut into ``rows`` streams."""
    return (tokens - 1) // rows


class TrainStreams:
    """The training split as ``rows`` streams, read one ``(rows, seq_len + 1)`` window per step.

    Each pass over the streams starts at a random phase in ``[0, seq_len)`` (drawn from the step's
    generator), so window boundaries move from pass to pass; a new pass is a new sequence, so
    :meth:`next` says when the carried state must start again from zero. The tokens a pass
    leaves out (its phase, and the end of each stream short of a whole window) are at most
    ``2 * seq_len`` per stream.

    :attr:`position` (the next window's offset in every stream, None before the first pass) is
    all that a checkpoint needs to continue the run exactly, with the generator's state.

    Raises:
        DataError: a stream would be shorter than one window.
    """

    def __init__(self, tokens: Tensor, rows: int, seq_len: int) -> None:
        check_streams(tokens.numel(), rows, seq_len)
        self.length = stream_length(tokens.numel(), rows)
        self.tokens, self.rows, self.seq_len = tokens, rows, seq_len
        self._starts = torch.arange(rows, device=tokens.device) * self.length  # (rows,)
        self._offsets = torch.arange(seq_len + 1, device=tokens.device)  # (L,)
        self.position: Optional[int] = None

    def next(self, generator: torch.Generator) -> tuple[Tensor, bool]:
        """The next window, ``(rows, seq_len + 1)`` long, and whether it starts a new pass (its
        rows continue nothing: start them from a zero state)."""
        T = self.seq_len
        fresh = self.position is None or self.position + T > self.length
        if fresh:
            # One host read per pass. The phase keeps a whole window inside each stream.
            phases = min(T, self.length - T + 1)
            self.position = int(torch.randint(0, phases, (1,), generator=generator, device=generator.device).item())
        assert self.position is not None
        index = (self._starts + self.position)[:, None] + self._offsets[None, :]  # (rows, L)
        self.position += T
        return self.tokens[index].long(), fresh


def stream_windows(tokens: Tensor, rows: int, seq_len: int) -> Iterator[tuple[Tensor, Optional[int]]]:
    """Every target of ``tokens`` exactly once, as windows of contiguous streams: ``rows`` streams
    (fewer when the split is short: each has at least one target) read ``seq_len`` targets at a
    time, then the tokens left over after ``rows * n + 1`` as the continuation of the last stream.

    Yields ``(window, carry)``: ``window`` ``(b, l + 1)`` long; ``carry`` None when the window's
    rows continue the previous window's rows one to one, else the row of the previous window that
    this single-row window continues (the leftover tail). The first window continues nothing.
    """
    targets = tokens.numel() - 1
    if targets < 1:
        return
    rows = max(1, min(rows, targets))
    n = stream_length(tokens.numel(), rows)
    starts = torch.arange(rows, device=tokens.device) * n  # (rows,)
    for p in range(0, n, seq_len):
        span = torch.arange(min(seq_len, n - p) + 1, device=tokens.device)
        yield tokens[(starts + p)[:, None] + span[None, :]].long(), None
    # The last stream ends at tokens[rows * n]; what follows continues it, then itself (row 0).
    carry = rows - 1
    for p in range(rows * n, targets, seq_len):
        yield tokens[p : min(p + seq_len, targets) + 1][None, :].long(), carry
        carry = 0
