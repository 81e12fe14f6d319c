"""The driver's check of a corpus and its data settings, without PyTorch.

What :func:`rnn.data.prepare_data` would refuse (a corpus that does not load or decode, a split
shorter than one window), found by the process that dispatches trials and trains nothing: it
imports no ``torch`` (about 270 MB of resident memory on its own), and holds no token stream. The
split and the length rules live here, and :mod:`rnn.data` uses the same ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from rnn.config import DataConfig
from rnn.corpus import Corpus, CorpusInfo, load_corpus
from rnn.ids import encoded
from rnn.tokenizer import build_tokenizer

__all__ = ["DataError", "check_data", "check_lengths", "check_streams", "split_texts"]


class DataError(ValueError):
    """The corpus and data settings cannot produce training (or validation) windows."""


#: A training split this many characters per window long has a window's worth of tokens at any
#: level (no tokenizer here makes tokens that long on average): ``check_data`` need not count.
_CHARS_PER_TOKEN_BOUND = 64


def check_data(
    cfg: DataConfig, cache_dir: Optional[Union[str, Path]] = None, data_dir: Optional[Union[str, Path]] = None,
    streams: int = 1,
) -> None:
    """What :func:`rnn.data.prepare_data` would refuse, found without holding the token streams: the corpus
    loads, the tokenizer trains (into the cache the workers on this machine then read), and each
    split has a window's worth of tokens (the validation split is encoded, and a short training
    split, into the id cache the workers then read; the ids are dropped at once). The driver's
    check before anything is dispatched.

    Raises:
        CorpusError, DataError: as :func:`rnn.data.prepare_data` would.
    """
    corpus, train_text, val_text = split_texts(cfg, data_dir)
    tokenizer = build_tokenizer(cfg.level, train_text, cfg.resolved_vocab_size(), cache_dir=cache_dir)
    need = streams * cfg.seq_len + 1  # one window, or a window in each of `streams` streams side by side
    if cfg.level == "char" or len(train_text) >= _CHARS_PER_TOKEN_BOUND * need:
        n_train = len(train_text) if cfg.level == "char" else need
    else:
        n_train = len(encoded(tokenizer, train_text, cache_dir)[0])
    n_val = len(encoded(tokenizer, val_text, cache_dir)[0]) if cfg.val_fraction > 0 else 0
    check_lengths(cfg, corpus, n_train, n_val)
    check_streams(n_train, streams, cfg.seq_len)


def split_texts(cfg: DataConfig, data_dir: Optional[Union[str, Path]]) -> tuple[Corpus, str, str]:
    """The corpus and its two texts: the training split, and the held-out split's evaluated part
    (its head under ``data.val_max_chars``)."""
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise DataError(f"data.val_fraction must be in [0, 1) (got {cfg.val_fraction})")
    if cfg.seq_len < 1:
        raise DataError(f"data.seq_len must be >= 1 (got {cfg.seq_len})")
    corpus = load_corpus(cfg.corpus, data_dir)
    text = corpus.text
    n_train_chars = int(len(text) * (1.0 - cfg.val_fraction))
    train_text, val_text = text[:n_train_chars], text[n_train_chars:]
    if cfg.val_max_chars is not None:  # evaluate the held-out split's head only (the split does not move)
        val_text = val_text[: cfg.val_max_chars]
    return corpus, train_text, val_text


def check_streams(n_train: int, streams: int, seq_len: int) -> None:
    """``train.stateful`` cuts the training split into ``streams`` streams of at least one window
    each (:class:`rnn.streams.TrainStreams`): refuse a split too short for that."""
    if streams > 1 and n_train < streams * seq_len + 1:
        raise DataError(
            f"train.stateful: the training split has {n_train} tokens, too few for {streams} streams "
            f"(batch_size) of at least seq_len {seq_len} + 1 tokens each; lower batch_size or seq_len"
        )


def check_lengths(cfg: DataConfig, corpus: Union[Corpus, CorpusInfo], n_train: int, n_val: int) -> None:
    window = cfg.seq_len + 1
    if n_train < window:
        raise DataError(
            f"corpus {corpus.name!r} ({corpus.source}): the training split has {n_train} "
            f"{cfg.level} tokens but one window needs seq_len + 1 = {window}; lower data.seq_len "
            f"or use a bigger corpus"
        )
    if cfg.val_fraction > 0 and n_val < window:
        raise DataError(
            f"corpus {corpus.name!r} ({corpus.source}): the validation split "
            f"(val_fraction {cfg.val_fraction}) has {n_val} {cfg.level} tokens but one "
            f"window needs seq_len + 1 = {window}; lower data.seq_len, raise data.val_fraction, "
            f"or use a bigger corpus (val_fraction 0 turns validation off)"
        )
