"""Token ids encoded once per machine and shared: a text's ids under a tokenizer, cached beside
the tokenizers and memory-mapped by every trial that reads them.

Encoding a big corpus takes seconds to minutes (a 30 MB text at word level: about 15-29 s per
trainer), and every trial of a sweep on a node encoded it again, then held its own copy.
:func:`encoded` keys the ids by the tokenizer's state and the text itself (SHA-256 of both: a
changed text, vocabulary or tokenizer can never be served stale ids) and stores them as
``ids-<key>.npy`` in the tokenizer cache folder, in the narrowest type that holds the vocabulary
(:func:`id_dtype`: int16, else int32; a quarter or half of int64's bytes). Every reader, the
trial that wrote the file included, maps the file copy-on-write instead of reading it: the trials
of a node share one copy of the ids in the page cache (nothing writes to them). Texts shorter
than :data:`MIN_CACHED_CHARS` are encoded every time (milliseconds; not worth a file).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional, Union

import numpy as np

from rnn.atomic import atomic_write
from rnn.tokenizer import Tokenizer, default_tokenizer_cache_dir

__all__ = ["MIN_CACHED_CHARS", "cached_figure", "encoded", "id_dtype"]

log = logging.getLogger(__name__)

#: Texts at least this long have their ids cached.
MIN_CACHED_CHARS = 100_000
_FORMAT = 1
#: Characters of text hashed at a time (the key never holds a UTF-8 copy of a whole corpus).
_HASH_SLICE_CHARS = 1 << 22


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest integer type that holds every id of a ``vocab_size`` vocabulary."""
    return np.dtype(np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32)


def _cache_file(cache_dir: Optional[Union[str, Path]], name: str) -> Path:
    """``name`` in the cache folder (default: the tokenizers')."""
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_tokenizer_cache_dir()
    return directory / name


def _key(tokenizer: Tokenizer, *texts: str) -> str:
    digest = hashlib.sha256(json.dumps(tokenizer.to_state(), sort_keys=True, default=str).encode("utf-8"))
    for text in texts:
        digest.update(b"\0")
        for start in range(0, len(text), _HASH_SLICE_CHARS):
            digest.update(text[start : start + _HASH_SLICE_CHARS].encode("utf-8"))
    return digest.hexdigest()[:32]


def cached_figure(name: str, tokenizer: Tokenizer, texts: Sequence[str], compute: Callable[[], float],
                  cache_dir: Optional[Union[str, Path]] = None) -> float:
    """``compute()``, a number that depends only on ``tokenizer`` and ``texts``, kept beside the ids
    as ``<name>-<key>.json`` (keyed as the ids are) when the texts are long enough for their ids to
    be cached: what every later trial on the machine would otherwise compute again. An unreadable
    or unwritable file costs a computation, nothing more."""
    if sum(len(t) for t in texts) < MIN_CACHED_CHARS:
        return compute()
    path = _cache_file(cache_dir, f"{name}-{_key(tokenizer, *texts)}-f{_FORMAT}.json")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["value"]
        if isinstance(value, (int, float)):
            return float(value)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring unreadable cache file %s (%s); computing again", path, e)
    value = compute()
    try:
        atomic_write(path, lambda f: f.write(json.dumps({"value": value}).encode("utf-8")))
    except OSError as e:
        log.warning("could not cache %s at %s (%s)", name, path, e)
    return value


def encoded(tokenizer: Tokenizer, text: str, cache_dir: Optional[Union[str, Path]] = None) -> tuple[np.ndarray, bool]:
    """``text``'s token ids under ``tokenizer``, and whether they came from the cache (see the
    module docstring). The array is 1-D of :func:`id_dtype`; for a cached text it is a
    copy-on-write map of the cache file. A cache that cannot be read or written costs an encode
    (and the trial its own copy of the ids), nothing more."""
    dtype = id_dtype(tokenizer.vocab_size)
    if len(text) < MIN_CACHED_CHARS:
        return tokenizer.encode_array(text, dtype), False
    path = _cache_file(cache_dir, f"ids-{_key(tokenizer, text)}-f{_FORMAT}.npy")
    if path.is_file():
        ids = _mapped(path, dtype)
        if ids is not None:
            return ids, True
    ids = tokenizer.encode_array(text, dtype)
    try:
        atomic_write(path, lambda f: np.save(f, ids, allow_pickle=False))
    except (OSError, ValueError) as e:  # a read-only cache costs an encode next time, nothing more
        log.warning("could not cache token ids at %s (%s)", path, e)
        return ids, False
    mapped = _mapped(path, dtype)  # the written file, shared with the node's next trials
    return (mapped if mapped is not None else ids), False


def _mapped(path: Path, dtype: np.dtype) -> Optional[np.ndarray]:
    """The ids in ``path`` mapped copy-on-write, or None (with a warning) where the file is not
    a 1-D array of ``dtype``."""
    try:
        ids = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable token-id cache %s (%s); encoding again", path, e)
        return None
    if ids.ndim != 1 or ids.dtype != dtype:
        log.warning("ignoring token-id cache %s (%s %s, expected 1-D %s); encoding again",
                    path, ids.shape, ids.dtype, dtype)
        return None
    return ids
