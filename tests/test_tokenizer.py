"""rnn.tokenizer: char / bpe / word tokenizers, state round trips and the on-disk cache."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer as HFTokenizer

from rnn.tokenizer import (
    BYTE_ALPHABET_SIZE,
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    _safe_chunks,
    build_tokenizer,
    tokenizer_from_state,
)

TRAIN = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n"
) * 20


# The default tokenizer cache under tmp_path, never the real ~/.cache.
pytestmark = pytest.mark.usefixtures("isolated_cache")


def _state_round_trip(tok):
    """Through JSON, as a checkpoint would store it."""
    return tokenizer_from_state(json.loads(json.dumps(tok.to_state())))


# ---- char ----


def test_char_vocab_is_train_only_and_unknown_maps_to_unk() -> None:
    tok = build_tokenizer("char", "abcab\n")
    assert isinstance(tok, CharTokenizer) and tok.level == "char"
    assert tok.vocab_size == 5  # <unk>, "\n", "a", "b", "c"
    assert tok.unk_id == 0
    assert tok.encode("abz") == [2, 3, 0]  # "z" was only in validation text
    assert tok.decode(tok.encode("cab\nba")) == "cab\nba"
    assert tok.decode([0]) == "\ufffd"


def test_char_vocab_size_argument_is_ignored() -> None:
    assert build_tokenizer("char", "xyz", vocab_size=1000).vocab_size == 4


def test_char_state_round_trip() -> None:
    tok = build_tokenizer("char", TRAIN)
    again = _state_round_trip(tok)
    assert again.vocab_size == tok.vocab_size
    assert again.encode(TRAIN + "€") == tok.encode(TRAIN + "€")


def test_char_decode_rejects_out_of_range_ids() -> None:
    tok = build_tokenizer("char", "ab")
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        tok.decode([1, 3])
    with pytest.raises(ValueError, match=r"\[0, 3\); got -1"):
        tok.decode([-1])


# ---- bpe ----


def test_bpe_cap_and_exact_round_trip(tmp_path: Path) -> None:
    tok = build_tokenizer("bpe", TRAIN, vocab_size=300, cache_dir=tmp_path)
    assert isinstance(tok, BPETokenizer) and tok.level == "bpe"
    assert tok.unk_id is None  # every byte is in the alphabet
    assert BYTE_ALPHABET_SIZE < tok.vocab_size <= 300
    assert tok.decode(tok.encode(TRAIN)) == TRAIN
    unseen = "  Ünïcödé\ttabs\r\n😀 and   spaces\n\n\n"  # bytes never seen in training
    ids = tok.encode(unseen)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == unseen
    assert len(tok.encode(" speak")) < len(" speak")  # it did learn merges


def test_bpe_cache_file_is_written_and_reused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = build_tokenizer("bpe", TRAIN, vocab_size=300, cache_dir=tmp_path, cache_key="k1")
    files = list(tmp_path.iterdir())
    assert [f.name for f in files] == ["bpe-300-k1-f2.json"]  # no temp files left behind
    # Same key, different text: a cache hit returns the first tokenizer rather than training.
    with caplog.at_level(logging.INFO, logger="rnn.tokenizer"):
        second = build_tokenizer("bpe", "zzzz qqqq " * 50, vocab_size=300, cache_dir=tmp_path, cache_key="k1")
    assert "loaded cached bpe tokenizer" in caplog.text
    assert second.to_state() == first.to_state()
    assert second.encode(TRAIN) == first.encode(TRAIN)


def test_bpe_default_key_follows_the_text(tmp_path: Path) -> None:
    a = build_tokenizer("bpe", TRAIN, vocab_size=300, cache_dir=tmp_path)
    b = build_tokenizer("bpe", "zzzz qqqq " * 50, vocab_size=300, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("bpe-300-*.json"))) == 2
    assert a.encode("zzzz") != b.encode("zzzz")


def test_bpe_default_cache_dir_honours_env(isolated_cache: Path) -> None:
    build_tokenizer("bpe", TRAIN, vocab_size=280)
    assert len(list((isolated_cache / "tokenizers").glob("bpe-280-*.json"))) == 1


def test_corrupt_cache_is_retrained(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "bpe-300-k-f2.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="rnn.tokenizer"):
        tok = build_tokenizer("bpe", TRAIN, vocab_size=300, cache_dir=tmp_path, cache_key="k")
    assert "unreadable tokenizer cache" in caplog.text
    assert tok.decode(tok.encode(TRAIN)) == TRAIN
    HFTokenizer.from_file(str(tmp_path / "bpe-300-k-f2.json"))  # rewritten and valid now


def test_bpe_state_round_trip(tmp_path: Path) -> None:
    tok = build_tokenizer("bpe", TRAIN, vocab_size=300, cache_dir=tmp_path)
    again = _state_round_trip(tok)
    assert isinstance(again, BPETokenizer)
    assert again.vocab_size == tok.vocab_size
    assert again.encode(TRAIN) == tok.encode(TRAIN)


def test_bpe_vocab_below_byte_alphabet_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 256"):
        build_tokenizer("bpe", TRAIN, vocab_size=100, cache_dir=tmp_path)


def test_chunked_encode_equals_whole_text_encode(shakespeare_path: Path, tmp_path: Path) -> None:
    text = shakespeare_path.read_text(encoding="utf-8")[:200_000]  # several encode chunks
    for level in ("bpe", "word"):
        tok = build_tokenizer(level, text[:50_000], vocab_size=500, cache_dir=tmp_path)
        whole = HFTokenizer.from_str(tok.to_state()["tokenizer_json"]).encode(text).ids
        assert tok.encode(text) == whole


def test_safe_chunks_keep_pretokenization_on_messy_whitespace(tmp_path: Path) -> None:
    rng = random.Random(0)
    alphabet = list("ab c\n\n  \t's.,!1é\u00a0\u2028\u3000😀\r")
    text = "".join(rng.choice(alphabet) for _ in range(20_000))
    chunks = _safe_chunks(text, target_chars=100)
    assert len(chunks) > 10 and "".join(chunks) == text
    for level in ("bpe", "word"):
        hf = HFTokenizer.from_str(
            build_tokenizer(level, text, vocab_size=300, cache_dir=tmp_path).to_state()["tokenizer_json"]
        )
        assert [i for c in chunks for i in hf.encode(c).ids] == hf.encode(text).ids


# ---- word ----


def test_word_cap_unk_and_whitespace_pieces(tmp_path: Path) -> None:
    text = "the cat sat on the mat . the dog sat on the log . the end"
    tok = build_tokenizer("word", text, vocab_size=3, cache_dir=tmp_path)
    assert isinstance(tok, WordTokenizer) and tok.level == "word"
    assert tok.vocab_size == 3  # [UNK] + the 2 most frequent pieces: " " and "the"
    assert tok.unk_id == 0
    ids = tok.encode("the zebra sat")
    assert ids[0] != tok.unk_id and ids[1] != tok.unk_id and ids[2] == tok.unk_id  # the, " ", zebra
    assert tok.decode(ids) == "the [UNK] [UNK]"


def test_word_splits_punctuation_and_round_trips_state(tmp_path: Path) -> None:
    tok = build_tokenizer("word", TRAIN, vocab_size=1000, cache_dir=tmp_path)
    assert tok.vocab_size < 1000  # fewer distinct words than the cap
    assert tok.unk_id not in tok.encode("speak, speak.")
    assert len(tok.encode("speak, speak.")) == 5  # speak , " " speak .
    assert _state_round_trip(tok).encode(TRAIN) == tok.encode(TRAIN)


# ---- dispatch ----


def test_unknown_level_lists_the_options() -> None:
    with pytest.raises(ValueError, match="char, bpe, word"):
        build_tokenizer("sentencepiece", TRAIN)


def test_bad_state_is_refused() -> None:
    with pytest.raises(ValueError, match="char, bpe, word"):
        tokenizer_from_state({"level": "bytes"})
    with pytest.raises(ValueError, match="tokenizer_json"):
        tokenizer_from_state({"level": "bpe"})
