"""Checkpoints: written atomically, loaded without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so that
``torch.load(..., weights_only=True)`` can read it: a tampered file gets an error, never code
execution. It holds everything needed to rebuild the model and tokenizer without the corpus
and to continue the run exactly (optimiser, schedule, scaler and RNG states).
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path
from typing import Any, Union

import torch

from rnn.atomic import atomic_write
from rnn.errors import CheckpointError
from rnn.paths import not_a_file
from rnn.tokenizer import Tokenizer, tokenizer_from_state

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
    label = checkpoint_label(source)
    what = None if isinstance(source, (bytes, bytearray)) else not_a_file(source)
    if what is not None:
        raise CheckpointError(f"checkpoint {label}: {what}")
    try:
        fobj: Any = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
        with warnings.catch_warnings():  # a foreign pickle's protocol warning: the refusal below says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(fobj, map_location=map_location, weights_only=True)
    except FileNotFoundError as e:
        raise CheckpointError(f"checkpoint {label} does not exist") from e
    except pickle.UnpicklingError as e:  # refused by the weights-only loader: never load it otherwise
        raise CheckpointError(
            f"checkpoint {label} was refused: it is not a checkpoint written by this tool (it is damaged, or "
            "holds Python objects that a weights-only load does not run; this tool never loads such a file "
            "any other way)"
        ) from e
    except Exception as e:  # truncated zip, bad magic number, ...
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


def checkpoint_label(source: Union[PathLike, bytes]) -> str:
    """How messages name a checkpoint: its path, or ``<bytes>``."""
    return "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)


def checkpoint_tokenizer(state: dict[str, Any], label: str) -> Tokenizer:
    """The tokenizer a loaded checkpoint stores, checked against the vocabulary it claims.

    The claimed ``vocab_size`` sizes the model's embedding and head, so it must match the
    tokenizer before anything is allocated (a checkpoint claiming 10**12 ids is refused here,
    not by an allocation that exhausts memory).

    Raises:
        CheckpointError: no tokenizer, one that cannot be rebuilt, or a vocabulary that differs.
    """
    saved = state.get("tokenizer")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"checkpoint {label} holds no tokenizer, so its ids cannot be turned into text; "
            "use a checkpoint written by training (checkpoints/<trial_id>/best.pt)"
        )
    try:
        tokenizer = tokenizer_from_state(saved)
    except Exception as e:  # ValueError from our states, plain Exception from the tokenizers library
        raise CheckpointError(f"checkpoint {label} holds a tokenizer that cannot be rebuilt ({e})") from e
    claimed = state.get("vocab_size")
    if isinstance(claimed, bool) or not isinstance(claimed, int) or claimed != tokenizer.vocab_size:
        raise CheckpointError(
            f"checkpoint {label} claims a vocabulary of {claimed!r} ids, but its tokenizer has "
            f"{tokenizer.vocab_size}; the file is corrupted or was edited"
        )
    return tokenizer
