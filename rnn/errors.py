"""The engine's error classes and the one classification the orchestrator needs from it."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, tampered with or from another model."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a device out-of-memory error (CUDA, MPS or a CPU allocator failure).

    CUDA raises ``torch.OutOfMemoryError``; MPS and the CPU allocator raise a plain
    ``RuntimeError`` whose message says so, so the message is the only portable signal.
    """
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "failed to allocate" in text or "can't allocate memory" in text
    )


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (``Type`` alone for an empty message), for a warning or a
    result that must stay one line (compiler and driver errors run to pages)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
