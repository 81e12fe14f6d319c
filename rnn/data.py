"""Split, tokenize, and cut token streams into windows, all on the training device.

The corpus is split contiguously at a character position (nanoGPT's convention):
``train = text[:int(n * (1 - val_fraction))]``, ``val`` the rest. The tokenizer is
trained on the training text only, and the two splits are encoded separately.

Each split is held as one 1-D tensor of token ids on the device, in the narrowest integer type
that holds the vocabulary (int16, else int32: :func:`rnn.ids.id_dtype`). On the CPU a corpus's
ids are a copy-on-write map of the node's id cache (:mod:`rnn.ids`), so the trials of a node share
one copy. Training windows are gathered from it with device ops and a device ``torch.Generator``
(no DataLoader, no host copy or sync per step) and widened to ``torch.long`` per batch;
validation windows are precomputed once. The corpus text itself is not kept.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from rnn.bpc import bits_per_char, unknown_piece_bits
from rnn.config import DataConfig
from rnn.corpus import CorpusInfo
from rnn.data_check import DataError, check_lengths, split_texts
from rnn.ids import cached_figure, encoded
from rnn.tokenizer import Tokenizer, build_tokenizer

logger = logging.getLogger(__name__)


@dataclass(eq=False)  # tensors have no useful ==
class LMData:
    """Token streams and the windows cut from them.

    Validation windows: window ``i`` is ``val[i*seq_len : i*seq_len + seq_len + 1]``; they
    predict every validation token after the first exactly once. When ``len(val) - 1`` is
    not a multiple of ``seq_len``, the tail is covered by one final, *shorter* window
    (yielded alone as a ``[1, tail + 1]`` batch), so weight losses by target count
    (``num_val_targets``), not by batch.
    """

    train: Tensor = field(repr=False)  # (N_train,) int16/int32 ids, on the device
    val: Tensor = field(repr=False)  # (N_val,) same type and device; empty without validation
    tokenizer: Tokenizer
    corpus: CorpusInfo = field(repr=False)
    seq_len: int
    val_chars: int  # characters in the validation text (what each evaluation reads)
    train_chars: int  # characters in the training text
    #: characters in the whole held-out split (``val_chars`` is its head under data.val_max_chars)
    heldout_chars: Optional[int] = None
    val_unknown_bits: float = 0.0  # bits to spell out the validation targets' [UNK] pieces (rnn.bpc)
    _offsets: Tensor = field(init=False, repr=False)
    _val_windows: Tensor = field(init=False, repr=False)
    _val_tail: Optional[Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.train.dim() != 1 or self.val.dim() != 1:
            raise ValueError("LMData.train and LMData.val must be 1-D token streams")
        if self.train.is_floating_point() or self.val.is_floating_point():
            raise ValueError("LMData.train and LMData.val must hold integer token ids")
        if self.heldout_chars is None:
            self.heldout_chars = self.val_chars
        if self.train.numel() < self.seq_len + 1:
            raise DataError(f"the training stream has {self.train.numel()} tokens; one window needs {self.seq_len + 1}")
        L = self.seq_len + 1
        self._offsets = torch.arange(L, device=self.train.device)  # (L,)
        n_val = self.val.numel()
        n_full = (n_val - 1) // self.seq_len if n_val >= 2 else 0
        # Stride seq_len, length seq_len + 1: consecutive windows share one token (a window's
        # last target is the next one's first input), so each token is predicted once.
        if n_full:
            self._val_windows = self.val.unfold(0, L, self.seq_len).contiguous()  # (n_full, L)
        else:
            self._val_windows = self.val.new_empty((0, L))
        tail_start = n_full * self.seq_len
        self._val_tail = self.val[tail_start:].clone() if n_val - tail_start >= 2 else None  # (tail + 1,)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def val_coverage(self) -> float:
        """The share of the held-out split's characters each evaluation reads: 1.0 for all of
        it, less under ``data.val_max_chars`` (NaN without validation)."""
        return self.val_chars / self.heldout_chars if self.heldout_chars else math.nan

    @property
    def tokens_per_char_val(self) -> float:
        """Validation tokens per validation character (NaN without validation).

        bits/char = val_loss_nats_per_token * tokens_per_char_val / ln 2.
        """
        return self.val.numel() / self.val_chars if self.val_chars else math.nan

    def val_bpc(self, loss_nats: float) -> float:
        """Bits per validation character for a mean validation loss (nats/token), with every
        ``[UNK]`` charged its spelling (see :mod:`rnn.bpc`)."""
        return bits_per_char(loss_nats, self.num_val_targets, self.val_unknown_bits, self.val.numel(), self.val_chars)

    @property
    def unigram_loss(self) -> float:
        """The validation targets' cross-entropy (nats/token) under the training split's token
        frequencies, add-one smoothed: what a model that learned only how often each token occurs
        scores. A trained model well below it has learned context; one near it has not. NaN
        without validation."""
        if self.num_val_targets == 0:
            return math.nan
        counts = torch.bincount(self.train.long(), minlength=self.vocab_size).double() + 1.0
        log_p = (counts / counts.sum()).log()
        return float(-log_p[self.val[1:].long()].mean())

    @property
    def num_val_targets(self) -> int:
        """Tokens predicted across :meth:`val_batches`: ``len(val) - 1`` (0 without validation)."""
        return max(self.val.numel() - 1, 0)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps for ``batch_size`` windows to see about as many tokens as the train split."""
        return math.ceil(self.train.numel() / (batch_size * self.seq_len))

    def sample_batch(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """``batch_size`` random windows of ``seq_len + 1`` tokens from the train stream.

        ``generator`` must live on the data's device (``torch.Generator(device=...)``), so the
        draw stays on the device and the sequence of batches is reproducible from its seed.
        Returns ``(batch_size, seq_len + 1)`` long (the ids are stored narrower).
        """
        device = self.train.device
        if generator.device.type != device.type:
            raise ValueError(
                f"generator is on {generator.device} but the data is on {device}; "
                f"create it with torch.Generator(device={str(device)!r})"
            )
        L = self.seq_len + 1
        starts = torch.randint(
            0, self.train.numel() - L + 1, (batch_size,), generator=generator, device=device
        )  # (B,)
        index = starts[:, None] + self._offsets[None, :]  # (B, L)
        return self.train[index].long()  # (B, L): one gather, then widened

    def val_batches(self, batch_size: int) -> Iterator[Tensor]:
        """Fixed validation windows in order: ``(b, seq_len + 1)`` batches of at most
        ``batch_size``, then the shorter tail window if any as ``(1, tail + 1)``. Yields
        nothing without validation."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        for start in range(0, self._val_windows.shape[0], batch_size):
            yield self._val_windows[start : start + batch_size].long()  # (b, L)
        if self._val_tail is not None:
            yield self._val_tail[None, :].long()  # (1, tail + 1)


def prepare_data(
    cfg: DataConfig,
    device: Union[torch.device, str] = "cpu",
    cache_dir: Optional[Union[str, Path]] = None,
    data_dir: Optional[Union[str, Path]] = None,
) -> LMData:
    """Load ``cfg.corpus``, split it, train the tokenizer on the train split, and put both
    encoded splits on ``device``.

    Args:
        cfg: corpus, level, vocab_size, seq_len and val_fraction.
        device: where the token streams live (the training device).
        cache_dir: tokenizer cache directory (see :func:`rnn.tokenizer.build_tokenizer`).
        data_dir: first place to look for downloadable corpora (see :func:`rnn.corpus.load_corpus`).

    Raises:
        CorpusError: the corpus cannot be loaded.
        DataError: a split is too short for one window of ``seq_len + 1`` tokens.
    """
    device = torch.device(device)
    corpus, train_text, val_text = split_texts(cfg, data_dir)
    n_chars = len(corpus.text)

    t0 = time.perf_counter()
    tokenizer = build_tokenizer(cfg.level, train_text, cfg.resolved_vocab_size(), cache_dir=cache_dir)
    t1 = time.perf_counter()
    train_ids, train_cached = encoded(tokenizer, train_text, cache_dir)
    val_ids, val_cached = encoded(tokenizer, val_text, cache_dir)
    train, val = torch.from_numpy(train_ids).to(device), torch.from_numpy(val_ids).to(device)
    logger.info(
        "corpus %s (%d chars, sha256 %s...): %s vocab %d, %d train / %d val tokens "
        "(tokenizer %.2fs, %s %.2fs)",
        corpus.name, n_chars, corpus.sha256[:12], cfg.level, tokenizer.vocab_size,
        train.numel(), val.numel(), t1 - t0,
        "ids from the cache" if train_cached and val_cached else "encode", time.perf_counter() - t1,
    )

    check_lengths(cfg, corpus, train.numel(), val.numel())
    return LMData(
        train=train,
        val=val,
        tokenizer=tokenizer,
        corpus=corpus.info(),
        seq_len=cfg.seq_len,
        val_chars=len(val_text),
        train_chars=len(train_text),
        heldout_chars=n_chars - len(train_text),
        # At word level this pre-tokenizes the whole training split (about 4 s of a 10 MB corpus):
        # computed once per machine, like the ids.
        val_unknown_bits=cached_figure("unknown-bits", tokenizer, (train_text, val_text),
                                       lambda: unknown_piece_bits(tokenizer, train_text, val_text), cache_dir)
        if tokenizer.level == "word" else 0.0,
    )
