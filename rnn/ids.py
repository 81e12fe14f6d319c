"""Token ids encoded once per machine: a text's ids under a tokenizer, cached beside the tokenizers.

Encoding a big corpus takes seconds to minutes (a 30 MB text at word level: about 15-29 s per
trainer), and every trial of a sweep on a node encoded it again. :func:`encoded` keys the ids by
the tokenizer's state and the text itself (SHA-256 of both: a changed text, vocabulary or
tokenizer can never be served stale ids), stores them as ``ids-<key>.npy`` in the tokenizer
cache folder (int16 when the vocabulary fits, else int32: a quarter or half of int64's bytes),
and the next trial on the node reads them back instead of encoding. Texts shorter than
:data:`MIN_CACHED_CHARS` are encoded every time (milliseconds; not worth a file).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Optional, Union

import numpy as np

from rnn.atomic import atomic_write
from rnn.tokenizer import Tokenizer, default_tokenizer_cache_dir

__all__ = ["MIN_CACHED_CHARS", "encoded"]

log = logging.getLogger(__name__)

#: Texts at least this long have their ids cached.
MIN_CACHED_CHARS = 100_000
_FORMAT = 1


def _key(tokenizer: Tokenizer, text: str) -> str:
    digest = hashlib.sha256(json.dumps(tokenizer.to_state(), sort_keys=True, default=str).encode("utf-8"))
    digest.update(b"\0")
    digest.update(text.encode("utf-8"))
    return digest.hexdigest()[:32]


def encoded(tokenizer: Tokenizer, text: str, cache_dir: Optional[Union[str, Path]] = None) -> tuple[np.ndarray, bool]:
    """``text``'s token ids under ``tokenizer`` (an int64 array), and whether they came from the
    cache (see the module docstring). A cache that cannot be read or written costs an encode."""
    if len(text) < MIN_CACHED_CHARS:
        return _encode(tokenizer, text), False
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_tokenizer_cache_dir()
    path = directory / f"ids-{_key(tokenizer, text)}-f{_FORMAT}.npy"
    if path.is_file():
        try:
            ids = np.load(path, allow_pickle=False)
            if ids.ndim == 1:
                return ids.astype(np.int64), True
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable token-id cache %s (%s); encoding again", path, e)
    ids = _encode(tokenizer, text)
    dtype = np.int16 if tokenizer.vocab_size <= np.iinfo(np.int16).max else np.int32
    buffer = io.BytesIO()
    np.save(buffer, ids.astype(dtype), allow_pickle=False)
    try:
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
    except OSError as e:  # a read-only cache costs an encode next time, nothing more
        log.warning("could not cache token ids at %s (%s)", path, e)
    return ids, False


def _encode(tokenizer: Tokenizer, text: str) -> np.ndarray:
    ids = tokenizer.encode(text)
    return np.fromiter(ids, dtype=np.int64, count=len(ids))
