"""Bits per character compare across levels: whitespace kept, every [UNK] pays for its spelling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rnn.bpc import CODE_POINT_BITS, SpellingModel, unknown_piece_bits
from rnn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnn.data import prepare_data
from rnn.tokenizer import build_tokenizer
from rnn.train import Trainer


def unigram_bpc(level: str, vocab_size: int | None, cache: Path) -> float:
    """Validation bpc of an add-one unigram model over the training tokens, through the engine's bpc."""
    data = prepare_data(DataConfig(corpus="builtin", level=level, vocab_size=vocab_size, seq_len=16), cache_dir=cache)
    counts = torch.bincount(data.train.long(), minlength=data.vocab_size).double() + 1
    logp = (counts / counts.sum()).log()  # (V,)
    return data.val_bpc(float(-logp[data.val[1:].long()].mean()))


@pytest.mark.slow
def test_unigram_levels_order_sensibly_and_a_tiny_vocabulary_does_not_win(tmp_path: Path) -> None:
    bpc = {
        name: unigram_bpc(level, size, tmp_path)
        for name, level, size in [("char", "char", None), ("bpe512", "bpe", 512), ("word10000", "word", 10000),
                                  ("word1000", "word", 1000), ("word2", "word", 2)]
    }
    # Measured: char 4.67, bpe512 3.40, word10000 3.15, word1000 3.70, word2 5.56. Before whitespace
    # was kept and [UNK] was charged: word1000 1.43, word2 0.06.
    assert bpc["word2"] > bpc["char"] > max(bpc["bpe512"], bpc["word1000"], bpc["word10000"])
    assert bpc["word10000"] < bpc["word1000"]  # a bigger vocabulary spells out fewer words
    assert all(2.5 < v < 7 for v in bpc.values()), bpc


def test_word_tokenizer_keeps_whitespace_and_decodes_the_text_back(tmp_path: Path) -> None:
    text = "the cat sat on the mat .\n\nthe  dog sat"
    tok = build_tokenizer("word", text, vocab_size=1000, cache_dir=tmp_path)
    assert tok.decode(tok.encode(text)) == text
    assert "".join(tok.pieces(text)) == text and len(tok.pieces(text)) == len(tok.encode(text))
    small = build_tokenizer("word", text, vocab_size=4, cache_dir=tmp_path)
    assert small.decode(small.encode("the zebra")) == "the [UNK]"


def test_spelling_model_is_a_proper_code() -> None:
    model = SpellingModel.fit(["ab", "a"])  # counts a:2 b:1, 2 pieces; add-one over a, b, end, escape
    total = 3 + 2 + 2 + 2
    assert model.bits("a") == pytest.approx(-math.log2(3 / total) - math.log2(3 / total))
    assert model.bits("z") == pytest.approx(-math.log2(1 / total) + CODE_POINT_BITS - math.log2(3 / total))
    # Kraft: the probabilities of all pieces up to length 3 over {a, b} sum below 1.
    mass = sum(2.0 ** -model.bits(p) for p in ["a", "b", "aa", "ab", "ba", "bb", "aaa", "aab", "bbb"])
    assert mass < 1


def test_unknown_pieces_are_charged_and_known_ones_are_not(tmp_path: Path) -> None:
    train = "the cat sat on the mat . the dog sat"
    tok = build_tokenizer("word", train, vocab_size=1000, cache_dir=tmp_path)
    assert unknown_piece_bits(tok, train, "the cat sat") == 0.0
    assert unknown_piece_bits(tok, train, "the zebra sat") > 5 * 4  # five letters and an end
    char = build_tokenizer("char", train)
    assert unknown_piece_bits(char, train, "the zebra sat") == 0.0


@pytest.mark.slow
def test_a_word_model_with_two_ids_reports_an_honest_bpc(tmp_path: Path) -> None:
    # Sixty steps at vocab_size 2 used to report 0.057 bpc and 95% accuracy.
    cfg = RunConfig(
        data=DataConfig(corpus="builtin", level="word", vocab_size=2, seq_len=16),
        model=ModelConfig(embedding_dim=16, hidden_size=32, num_layers=1, dropout=0.0),
        train=TrainConfig(batch_size=8, max_steps=60, eval_every=60, lr=3e-3, scheduler="constant"),
    )
    result = Trainer(cfg, tmp_path, cache_dir=tmp_path / "cache").fit()
    assert result.best_val_bpc > 4.0
