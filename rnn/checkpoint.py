"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(..., weights_only=True)`` can read it: a tampered file gets an error, never code
execution. It holds everything needed to rebuild the model and tokenizer without the corpus
and to continue the run exactly (optimiser, schedule, scaler and RNG states).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Union

import torch

from rnn.atomic import atomic_write
from rnn.errors import CheckpointError

PathLike = Union[str, os.PathLike]

#: Bumped when the layout of the checkpoint dict changes incompatibly.
FORMAT_VERSION = 1


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    payload = {"format_version": FORMAT_VERSION, **state}
    return atomic_write(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(source: Union[PathLike, bytes], map_location: Union[str, torch.device] = "cpu") -> dict[str, Any]:
    """Read a checkpoint from a path or from bytes with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file for anything unreadable.
    """
    label = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        fobj: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        state = torch.load(fobj, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {label} does not exist") from e
    except Exception as e:  # truncated zip, unpickling refused, bad magic number, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {label} cannot be loaded safely ({type(e).__name__}: {first[:300]}); "
            "it is truncated, corrupted or not a checkpoint written by this tool"
        ) from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {label} has an unknown layout (format_version "
            f"{state.get('format_version') if isinstance(state, dict) else None!r}, expected {FORMAT_VERSION})"
        )
    return state
