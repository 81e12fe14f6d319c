"""Bits per character that compare across char, BPE and word models.

bits/char = (the model's bits on the validation targets + the bits to spell out every unknown
piece) / the validation characters those targets cover.

- char and byte-level BPE: every character is predicted by the model itself. (A char model's
  ``<unk>`` only covers characters absent from the training split; they are rare and not
  charged extra.)
- word: the tokenizer keeps whitespace, so every character belongs to a predicted piece; an
  ``[UNK]`` token only says "some piece the vocabulary lacks", so each one is charged the cost
  of spelling its piece out under :class:`SpellingModel`, a character model fitted on the
  training split. That model is a proper distribution over strings, so the total is the length
  of a real code for the text: an upper bound on what the word model knows, never a shortcut.
  A tiny vocabulary therefore cannot win by calling everything ``[UNK]``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable

from rnn.tokenizer import Tokenizer, WordTokenizer

#: An unseen character is spelled as an escape plus a uniform code point (log2 of 0x110000 bits).
CODE_POINT_BITS = math.log2(0x110000)


class SpellingModel:
    """A unigram character model with an end-of-piece symbol: the bits to spell a piece out.

    Fitted with add-one smoothing over the seen characters, the end symbol and one escape for
    unseen characters; every probability comes from the training split.
    """

    def __init__(self, char_counts: Counter[str], pieces: int) -> None:
        total = sum(char_counts.values()) + pieces + len(char_counts) + 2  # +1 each: chars, end, escape
        self._bits = {c: -math.log2((n + 1) / total) for c, n in char_counts.items()}
        self._end_bits = -math.log2((pieces + 1) / total)
        self._unseen_bits = -math.log2(1 / total) + CODE_POINT_BITS

    @classmethod
    def fit(cls, pieces: Iterable[str]) -> SpellingModel:
        counts: Counter[str] = Counter()
        n = 0
        for piece in pieces:
            counts.update(piece)
            n += 1
        return cls(counts, n)

    def bits(self, piece: str) -> float:
        """Bits to spell ``piece`` followed by the end symbol."""
        unseen = self._unseen_bits
        return sum(self._bits.get(c, unseen) for c in piece) + self._end_bits


def unknown_piece_bits(tokenizer: Tokenizer, train_text: str, val_text: str) -> float:
    """Total bits to spell out the validation pieces a word tokenizer maps to ``[UNK]``.

    The spelling model is fitted on the training split's unknown pieces (all its pieces if none
    is unknown): rare words are what it has to spell. The first validation piece is skipped, as
    no window predicts the first token. 0 for char and BPE tokenizers.
    """
    if not isinstance(tokenizer, WordTokenizer):
        return 0.0
    train_pieces = tokenizer.pieces(train_text)
    rare = [p for p in train_pieces if not tokenizer.is_known(p)]
    speller = SpellingModel.fit(rare or train_pieces)
    return sum(speller.bits(p) for p in tokenizer.pieces(val_text)[1:] if not tokenizer.is_known(p))


def bits_per_char(loss_nats: float, num_targets: int, extra_bits: float, tokens: int, chars: int) -> float:
    """Bits per character from a mean loss over ``num_targets`` predicted tokens.

    ``extra_bits`` (spelling out unknown pieces) is spread over the same targets; the result is
    scaled by ``tokens / chars`` of the split (the first, unpredicted token is extrapolated).
    """
    if not num_targets or not chars:
        return math.nan
    return (loss_nats / math.log(2) + extra_bits / num_targets) * tokens / chars
