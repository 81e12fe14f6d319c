"""Char, byte-level BPE and word tokenizers behind one small interface.

Every tokenizer is trained on the *training split only* (the caller passes only that
text), so nothing about the validation text leaks into the vocabulary.

- ``char``: id 0 is ``<unk>``; ids 1.. are the training split's characters, sorted.
  A character seen only in validation encodes to 0 and decodes to U+FFFD.
- ``bpe``: byte-level BPE (GPT-2 style) from the ``tokenizers`` library. Every byte is in
  the base alphabet, so there is no unknown token and ``decode(encode(t)) == t`` exactly.
- ``word``: a ``tokenizers`` WordLevel model over words, punctuation runs and whitespace runs
  (:data:`WORD_PIECES`), capped at ``vocab_size`` entries including ``[UNK]``. Whitespace is
  a token like any other, so ``decode(encode(t)) == t`` wherever no piece of ``t`` is unknown;
  an unknown piece decodes as ``[UNK]``. Bits per character charge each ``[UNK]`` the cost of
  spelling its piece out (:mod:`rnn.bpc`). Tokenizers saved before whitespace was kept (in
  older checkpoints) still load and decode as they did, joining tokens with spaces.

``to_state()`` returns a JSON-able dict that checkpoints store; ``tokenizer_from_state``
rebuilds the tokenizer from it without the corpus. bpe/word training results are cached
on disk (see :func:`build_tokenizer`).
"""

from __future__ import annotations

import abc
import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from rnn.atomic import atomic_write
from rnn.config import DEFAULT_VOCAB_SIZE, LEVELS, MIN_VOCAB_SIZE
from rnn.corpus import cache_root

logger = logging.getLogger(__name__)

UNK_CHAR_TOKEN = "<unk>"
UNK_WORD_TOKEN = "[UNK]"
#: A word model's pieces: words, punctuation runs, whitespace runs (together, all of the text).
WORD_PIECES = r"\w+|[^\w\s]+|\s+"
#: Size of the byte-level BPE base alphabet; the smallest possible bpe vocabulary.
BYTE_ALPHABET_SIZE = 256
#: Bump when training settings change, so stale cached tokenizers are not reused.
_CACHE_FORMAT = 2  # 2: word pieces keep whitespace
#: Target chunk size for parallel ``encode_batch``; see :func:`_safe_chunks`.
_ENCODE_CHUNK_CHARS = 1 << 13
#: Characters per slice of :meth:`CharTokenizer.encode_array` (4 MB of UTF-32 at a time).
_ARRAY_SLICE_CHARS = 1 << 20

# A newline with a non-whitespace character on each side. Both pre-tokenizers used here
# (GPT-2's ByteLevel regex and Whitespace) always cut on both sides of such a newline and
# nothing in their patterns looks across it, so splitting the text there yields exactly the
# pre-tokens (hence the ids) of the whole text. The neighbour class is printable ASCII or a
# word character: characters every regex engine agrees are not whitespace.
_SAFE_SPLIT = re.compile(r"(?<=[!-~\w]\n)(?=[!-~\w])")


class Tokenizer(abc.ABC):
    """What the data layer, trainer and sampler need from a tokenizer."""

    #: ``"char"``, ``"bpe"`` or ``"word"``.
    level: str = ""
    #: The id unknown text maps to; ``None`` where nothing is unknown (byte-level BPE).
    unk_id: Optional[int] = None

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``range(vocab_size)``."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text to ids."""

    def encode_array(self, text: str, dtype: Any = np.int64) -> np.ndarray:
        """``encode(text)`` as a 1-D array of ``dtype`` (the id cache's and the data layer's form)."""
        ids = self.encode(text)
        return np.fromiter(ids, dtype=dtype, count=len(ids))

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Ids to text (lossy for ``word``)."""

    @abc.abstractmethod
    def to_state(self) -> dict[str, Any]:
        """A JSON-able dict from which :func:`tokenizer_from_state` rebuilds this tokenizer."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class CharTokenizer(Tokenizer):
    """Characters of the training text; id 0 is ``<unk>``."""

    level = "char"
    unk_id = 0

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer needs distinct single characters")
        self._chars = chars
        self._stoi = {c: i + 1 for i, c in enumerate(chars)}
        # U+FFFD keeps decode one character per id, so char-level text lengths line up.
        self._itos = ["\ufffd"] + chars

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self._itos)

    def encode(self, text: str) -> list[int]:
        get = self._stoi.get  # bound once: ~15 ns per character, ~60 ms for 1 MB
        return [get(c, 0) for c in text]

    def encode_array(self, text: str, dtype: Any = np.int64) -> np.ndarray:
        """Vectorised, a slice at a time: each code point (UTF-32) looked up in a table indexed by
        code point (unknown ones, and any past the largest known, map to 0). 100 MB of text takes
        a few seconds and a slice's worth of memory beside the result, where ``encode`` builds a
        Python list of 100 M ints (800 MB)."""
        top = max((ord(c) for c in self._chars), default=0)
        table = np.zeros(top + 2, dtype=dtype)  # the last entry: every code point past ``top``
        for c, i in self._stoi.items():
            table[ord(c)] = i
        out = np.empty(len(text), dtype=dtype)
        for start in range(0, len(text), _ARRAY_SLICE_CHARS):
            # surrogatepass: a lone surrogate (never in a decoded corpus) is unknown like any other
            piece = text[start : start + _ARRAY_SLICE_CHARS].encode("utf-32-le", "surrogatepass")
            code = np.frombuffer(piece, dtype="<u4")
            out[start : start + len(code)] = table[np.minimum(code, top + 1)]
        return out

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= len(self._itos)):
            raise ValueError(f"char ids must be in [0, {len(self._itos)}); got {min(ids)}..{max(ids)}")
        return "".join(self._itos[i] for i in ids)

    def to_state(self) -> dict[str, Any]:
        return {"level": self.level, "chars": list(self._chars)}


class _LibraryTokenizer(Tokenizer):
    """A ``tokenizers.Tokenizer`` behind the :class:`Tokenizer` interface."""

    def __init__(self, tok: HFTokenizer) -> None:
        self._tok = tok

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        chunks = _safe_chunks(text)
        if len(chunks) == 1:
            return self._tok.encode(chunks[0]).ids
        # encode_batch runs chunks in parallel (Rust threads); the safe split points keep
        # the ids identical to a single encode of the whole text. The _fast variant (tokenizers
        # >= 0.20) skips character offsets we never use. 1 MB: ~0.5 s vs ~1.4 s for one encode.
        batch = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [i for enc in batch(chunks) for i in enc.ids]

    def decode(self, ids: Sequence[int]) -> str:
        # skip_special_tokens=False: a word model's [UNK] should show in decoded text.
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_state(self) -> dict[str, Any]:
        return {"level": self.level, "tokenizer_json": self._tok.to_str()}


class BPETokenizer(_LibraryTokenizer):
    """Byte-level BPE; lossless, no unknown token."""

    level = "bpe"
    unk_id = None


class WordTokenizer(_LibraryTokenizer):
    """Word-level with ``[UNK]``: words, punctuation runs and whitespace runs are the pieces."""

    level = "word"

    def __init__(self, tok: HFTokenizer) -> None:
        super().__init__(tok)
        unk = tok.token_to_id(UNK_WORD_TOKEN)
        if unk is None:
            raise ValueError(f"word tokenizer has no {UNK_WORD_TOKEN} token")
        self.unk_id = unk

    def pieces(self, text: str) -> list[str]:
        """The pre-tokens of ``text``, one per id of :meth:`encode` (a word model maps each
        piece to its id or to ``[UNK]``)."""
        pre = self._tok.pre_tokenizer
        if pre is None:
            raise ValueError("word tokenizer has no pre-tokenizer")
        return [piece for chunk in _safe_chunks(text) for piece, _ in pre.pre_tokenize_str(chunk)]

    def is_known(self, piece: str) -> bool:
        """Whether ``piece`` has its own id (else it encodes to ``[UNK]``)."""
        return self._tok.token_to_id(piece) is not None


_LIBRARY_CLASSES: dict[str, type[_LibraryTokenizer]] = {"bpe": BPETokenizer, "word": WordTokenizer}


def _safe_chunks(text: str, target_chars: int = _ENCODE_CHUNK_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``target_chars`` at split points that do not change
    the pre-tokenization (see ``_SAFE_SPLIT``). Text with no such point stays whole."""
    chunks: list[str] = []
    start = 0
    while len(text) - start > target_chars:
        m = _SAFE_SPLIT.search(text, start + target_chars)
        if m is None:
            break
        chunks.append(text[start : m.start()])
        start = m.start()
    chunks.append(text[start:])
    return chunks


def _train_bpe(text: str, vocab_size: int) -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    # add_prefix_space=False: a leading space would break decode(encode(t)) == t.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing unknown
        show_progress=False,
    )
    chunks = _safe_chunks(text)
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    return tok


def _train_word(text: str, vocab_size: int) -> HFTokenizer:
    tok = HFTokenizer(models.WordLevel(unk_token=UNK_WORD_TOKEN))
    # Words, punctuation runs and whitespace runs: the whitespace is predicted like any token,
    # so every character of the text is accounted for and decoding gives the text back.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PIECES), behavior="isolated")
    tok.decoder = decoders.Fuse()  # concatenate: the pieces carry their own whitespace
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=[UNK_WORD_TOKEN], show_progress=False
    )
    chunks = _safe_chunks(text)
    tok.train_from_iterator(chunks, trainer=trainer, length=len(chunks))
    return tok


_TRAIN = {"bpe": _train_bpe, "word": _train_word}


def default_tokenizer_cache_dir() -> Path:
    """``<cache_root()>/tokenizers``; ``$RNN_CACHE_DIR`` moves the base."""
    return cache_root() / "tokenizers"


def build_tokenizer(
    level: str,
    train_text: str,
    vocab_size: Optional[int] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    cache_key: Optional[str] = None,
) -> Tokenizer:
    """Build a tokenizer of ``level`` from the training text.

    Args:
        level: ``"char"``, ``"bpe"`` or ``"word"``.
        train_text: the training split only.
        vocab_size: cap for bpe/word (``None``: ``DEFAULT_VOCAB_SIZE[level]``); ignored for char.
        cache_dir: where trained bpe/word tokenizers are cached as ``tokenizers`` JSON
            (default :func:`default_tokenizer_cache_dir`).
        cache_key: names the training text in the cache file name. Default: a SHA-256 of
            ``train_text``, which cannot go stale; pass your own only if it identifies the
            training text just as surely.

    A cached file is loaded instead of training; an unreadable one is retrained over.
    """
    if level not in LEVELS:
        raise ValueError(f"unknown tokenizer level {level!r}; expected one of: {', '.join(LEVELS)}")
    if level == "char":
        return CharTokenizer.from_text(train_text)  # milliseconds: not worth caching

    size = vocab_size if vocab_size is not None else DEFAULT_VOCAB_SIZE[level]
    if size < MIN_VOCAB_SIZE[level]:
        raise ValueError(f"{level} vocab_size must be at least {MIN_VOCAB_SIZE[level]} (got {size})")
    key = _file_safe_key(cache_key) if cache_key else hashlib.sha256(train_text.encode("utf-8")).hexdigest()[:16]
    directory = Path(cache_dir).expanduser() if cache_dir is not None else default_tokenizer_cache_dir()
    path = directory / f"{level}-{size}-{key}-f{_CACHE_FORMAT}.json"
    cls = _LIBRARY_CLASSES[level]

    if path.is_file():
        try:
            tok = cls(HFTokenizer.from_file(str(path)))
        except Exception as e:  # the library raises bare Exception for malformed JSON
            logger.warning("ignoring unreadable tokenizer cache %s (%s); retraining", path, e)
        else:
            logger.info("loaded cached %s tokenizer (vocab %d) from %s", level, tok.vocab_size, path)
            return tok

    logger.info("training %s tokenizer (vocab cap %d) on %d chars", level, size, len(train_text))
    hf = _TRAIN[level](train_text, size)
    try:
        atomic_write(path, lambda f: f.write(hf.to_str().encode("utf-8")))
    except OSError as e:  # a read-only cache costs a retrain next time, nothing more
        logger.warning("could not cache the %s tokenizer at %s (%s)", level, path, e)
    return cls(hf)


def _file_safe_key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", key):
        return key
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def tokenizer_from_state(state: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from :meth:`Tokenizer.to_state` output (e.g. from a checkpoint)."""
    level = state.get("level")
    if level == "char":
        if "chars" not in state:
            raise ValueError("char tokenizer state has no 'chars' entry")
        return CharTokenizer(state["chars"])
    if level in _LIBRARY_CLASSES:
        if "tokenizer_json" not in state:
            raise ValueError(f"{level} tokenizer state has no 'tokenizer_json' entry")
        return _LIBRARY_CLASSES[level](HFTokenizer.from_str(state["tokenizer_json"]))
    raise ValueError(f"tokenizer state has level {level!r}; expected one of: {', '.join(LEVELS)}")
