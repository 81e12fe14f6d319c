"""rnn.data: split, encode, on-device streams, training and validation windows."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from rnn.config import DataConfig
from rnn.corpus import load_corpus
from rnn.data import DataError, LMData, prepare_data
from rnn.data_check import check_data
from rnn.tokenizer import build_tokenizer

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


pytestmark = pytest.mark.usefixtures("isolated_cache")


def _corpus_file(tmp_path: Path, text: str, name: str = "tiny.txt") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(60))


def _char_data(tmp_path: Path, seq_len: int = 16, val_fraction: float = 0.1, text: str = TEXT) -> LMData:
    cfg = DataConfig(corpus=_corpus_file(tmp_path, text), level="char", seq_len=seq_len, val_fraction=val_fraction)
    return prepare_data(cfg, "cpu", cache_dir=tmp_path / "tok")


@pytest.mark.parametrize("device", DEVICES)
def test_streams_live_on_the_device(tmp_path: Path, device: str) -> None:
    cfg = DataConfig(corpus=_corpus_file(tmp_path, TEXT), level="char", seq_len=16)
    data = prepare_data(cfg, device, cache_dir=tmp_path / "tok")
    for stream in (data.train, data.val):
        assert stream.device.type == device
        assert stream.dtype == torch.int16 and stream.dim() == 1  # the narrowest type for the vocabulary
    g = torch.Generator(device=device).manual_seed(0)
    batch = data.sample_batch(4, g)
    assert batch.device.type == device and batch.shape == (4, 17) and batch.dtype == torch.long
    assert all(w.device.type == device and w.dtype == torch.long for w in data.val_batches(8))


def test_val_max_chars_evaluates_the_held_out_splits_head_and_moves_no_split(tmp_path: Path) -> None:
    whole = _char_data(tmp_path)
    cfg = DataConfig(corpus=_corpus_file(tmp_path, TEXT), level="char", seq_len=16, val_max_chars=100)
    head = prepare_data(cfg, "cpu", cache_dir=tmp_path / "tok")
    assert head.val_chars == 100 and head.val.tolist() == whole.val[:100].tolist()
    assert head.train.tolist() == whole.train.tolist()
    assert whole.val_coverage == 1.0 and head.val_coverage == pytest.approx(100 / whole.val_chars)
    assert head.heldout_chars == whole.val_chars


def test_the_unigram_baseline_is_the_validation_cross_entropy_of_training_frequencies(tmp_path: Path) -> None:
    data = _char_data(tmp_path)
    counts = torch.bincount(data.train.long(), minlength=data.vocab_size).double() + 1
    p = counts / counts.sum()
    expected = float(-sum(math.log(p[t]) for t in data.val[1:].tolist()) / (data.val.numel() - 1))
    assert data.unigram_loss == pytest.approx(expected)
    assert 0 < data.unigram_loss < math.log(data.vocab_size)  # below a uniform guess on this text


@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.slow
def test_token_ids_are_encoded_once_and_keyed_by_tokenizer_and_text(tmp_path: Path, level: str) -> None:
    from rnn.ids import MIN_CACHED_CHARS

    text = TEXT * (11 * MIN_CACHED_CHARS // len(TEXT))  # both splits long enough to cache
    cfg = DataConfig(corpus=_corpus_file(tmp_path, text), level=level, seq_len=16)
    first = prepare_data(cfg, cache_dir=tmp_path / "tok")
    cached = sorted((tmp_path / "tok").glob("ids-*.npy"))
    assert len(cached) == 2  # the training split's and the validation split's
    again = prepare_data(cfg, cache_dir=tmp_path / "tok")
    assert torch.equal(first.train, again.train) and torch.equal(first.val, again.val)
    assert again.train.dtype == torch.int16
    assert sorted((tmp_path / "tok").glob("ids-*.npy")) == cached  # read back, not written again
    other = prepare_data(replace(cfg, val_fraction=0.2), cache_dir=tmp_path / "tok")  # other texts: other files
    assert len(list((tmp_path / "tok").glob("ids-*.npy"))) == 4 and other.val.numel() > first.val.numel()
    cached[0].write_bytes(b"not numpy")  # a damaged file is encoded again
    assert torch.equal(prepare_data(cfg, cache_dir=tmp_path / "tok").train, first.train)


@pytest.mark.slow
def test_word_levels_unknown_piece_bits_are_computed_once_per_machine(tmp_path: Path) -> None:
    from rnn.bpc import unknown_piece_bits

    rng = np.random.default_rng(0)
    text = " ".join(f"w{i}" for i in rng.integers(0, 3000, 60_000))  # 3,000 words against a vocabulary of 500
    cfg = DataConfig(corpus=_corpus_file(tmp_path, text), level="word", vocab_size=500, seq_len=16)
    first = prepare_data(cfg, cache_dir=tmp_path / "tok")
    n = int(len(text) * (1 - cfg.val_fraction))
    assert first.val_unknown_bits > 0
    assert first.val_unknown_bits == pytest.approx(unknown_piece_bits(first.tokenizer, text[:n], text[n:]))
    (saved,) = (tmp_path / "tok").glob("unknown-bits-*.json")
    saved.write_text('{"value": 12.5}')  # a later trial reads it back instead of computing it
    assert prepare_data(cfg, cache_dir=tmp_path / "tok").val_unknown_bits == 12.5
    saved.write_text("not json")  # a damaged file is computed again
    assert prepare_data(cfg, cache_dir=tmp_path / "tok").val_unknown_bits == pytest.approx(first.val_unknown_bits)
    other = prepare_data(replace(cfg, val_fraction=0.2), cache_dir=tmp_path / "tok")  # other texts: another file
    assert len(list((tmp_path / "tok").glob("unknown-bits-*.json"))) == 2 and other.val_unknown_bits > 0


def test_cached_ids_are_one_shared_map_of_the_cache_file(tmp_path: Path) -> None:
    """Trials on a node share the ids: each maps the cache file (the writer too) rather than
    holding a copy, and nothing a trial does to its tensor reaches the file (copy-on-write)."""
    from rnn.ids import MIN_CACHED_CHARS

    text = TEXT * (11 * MIN_CACHED_CHARS // len(TEXT))
    cfg = DataConfig(corpus=_corpus_file(tmp_path, text), level="char", seq_len=16)
    first = prepare_data(cfg, cache_dir=tmp_path / "tok")
    second = prepare_data(cfg, cache_dir=tmp_path / "tok")
    train_file = max((tmp_path / "tok").glob("ids-*.npy"), key=lambda p: p.stat().st_size)
    maps = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(train_file))]
    assert len(maps) >= 2  # both runs map the file; neither read it into its own memory
    on_disk = np.load(train_file)
    assert on_disk.dtype == np.int16 and on_disk.tolist() == first.train.tolist()
    second.train[:10] = 0  # a private page: the file and the first run's view are untouched
    assert np.load(train_file)[:10].tolist() == on_disk[:10].tolist() == first.train[:10].tolist()
    assert not hasattr(first.corpus, "text")  # the text is not kept once encoded


def test_char_ids_match_the_list_encoder(tmp_path: Path) -> None:
    """The vectorised char encoder (used for every cached text) gives ``encode``'s ids exactly,
    unknown characters and characters past the vocabulary's largest code point included."""
    from rnn.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("hello world\nÄé😀")
    for text in ["", "hello", "héllo😀xyz\n\U0010ffff", "ab\udc80c", "Ä" * 3_000_000]:
        assert tok.encode_array(text, np.int16).tolist() == tok.encode(text)
    assert CharTokenizer([]).encode_array("abc").tolist() == [0, 0, 0]


def test_contiguous_split_and_train_only_vocab(tmp_path: Path) -> None:
    text = TEXT + "ZZZ\n"  # "Z" occurs only in the last 10 %: validation
    data = _char_data(tmp_path, text=text)
    n_train = int(len(text) * 0.9)
    assert (data.train_chars, data.val_chars) == (n_train, len(text) - n_train)
    assert data.tokenizer.decode(data.train.tolist()) == text[:n_train]
    assert "Z" not in data.tokenizer.to_state()["chars"]
    assert data.val[-4:].tolist() == [0, 0, 0, data.tokenizer.encode("\n")[0]]  # Z -> <unk>
    assert data.vocab_size == data.tokenizer.vocab_size
    assert data.tokens_per_char_val == 1.0  # char level: one token per character
    assert data.corpus.name == "tiny"


def test_sample_batch_windows_are_real_slices_and_seeded(tmp_path: Path) -> None:
    data = _char_data(tmp_path, seq_len=16)
    L = data.seq_len + 1
    batch = data.sample_batch(32, torch.Generator().manual_seed(123))  # (32, L)
    assert batch.shape == (32, L) and batch.dtype == torch.long
    all_windows = data.train.unfold(0, L, 1)  # (N - L + 1, L): every contiguous slice
    for row in batch:
        assert (all_windows == row).all(dim=1).any()
    again = data.sample_batch(32, torch.Generator().manual_seed(123))
    other = data.sample_batch(32, torch.Generator().manual_seed(124))
    assert torch.equal(batch, again)
    assert not torch.equal(batch, other)


def test_sample_batch_can_reach_both_ends(tmp_path: Path) -> None:
    # A stream exactly one window long has a single start: the window is the whole stream.
    data = _char_data(tmp_path, seq_len=10, val_fraction=0.0, text="abcdefghijk")
    batch = data.sample_batch(3, torch.Generator().manual_seed(0))
    assert torch.equal(batch, data.train.expand(3, -1))


@pytest.mark.parametrize("seq_len", [16, 7, 1])
@pytest.mark.parametrize("batch_size", [1, 5, 1000])
def test_val_batches_predict_every_val_token_once(tmp_path: Path, seq_len: int, batch_size: int) -> None:
    data = _char_data(tmp_path, seq_len=seq_len)
    batches = list(data.val_batches(batch_size))
    targets = torch.cat([w[:, 1:].reshape(-1) for w in batches])
    inputs_first = torch.cat([w[:, 0] for w in batches])
    assert torch.equal(targets, data.val[1:])  # in order, each exactly once
    assert targets.numel() == data.num_val_targets == data.val.numel() - 1
    assert inputs_first[0] == data.val[0]
    assert all(w.shape[0] <= batch_size for w in batches)
    full = [w for w in batches if w.shape[1] == seq_len + 1]
    assert len(full) >= len(batches) - 1  # at most one shorter tail window, and it comes last
    if len(full) < len(batches):
        assert batches[-1].shape[0] == 1 and 2 <= batches[-1].shape[1] <= seq_len
    assert [w.tolist() for w in data.val_batches(batch_size)] == [w.tolist() for w in batches]


def test_val_batches_without_a_tail(tmp_path: Path) -> None:
    # 100 chars, val_fraction 0.21 -> 21 val tokens -> 20 targets = 4 windows of 5, no tail.
    data = _char_data(tmp_path, seq_len=5, val_fraction=0.21, text="abcdefghij" * 10)
    assert data.val.numel() == 21
    batches = list(data.val_batches(3))
    assert [tuple(w.shape) for w in batches] == [(3, 6), (1, 6)]


def test_no_validation(tmp_path: Path) -> None:
    data = _char_data(tmp_path, val_fraction=0.0)
    assert data.val.numel() == 0 and data.val_chars == 0
    assert list(data.val_batches(4)) == []
    assert data.num_val_targets == 0
    assert math.isnan(data.tokens_per_char_val)
    assert data.train_chars == len(TEXT)


def test_steps_per_epoch(tmp_path: Path) -> None:
    data = _char_data(tmp_path, seq_len=16)
    n = data.train.numel()
    assert data.steps_per_epoch(4) == math.ceil(n / 64)
    assert data.steps_per_epoch(10**6) == 1


def test_training_split_too_short(tmp_path: Path) -> None:
    cfg = DataConfig(corpus=_corpus_file(tmp_path, "hello world\n"), level="char", seq_len=100)
    with pytest.raises(DataError) as e:
        prepare_data(cfg, cache_dir=tmp_path / "tok")
    msg = str(e.value)
    assert "10 char tokens" in msg and "101" in msg and "seq_len" in msg and "tiny" in msg


def test_validation_split_too_short(tmp_path: Path) -> None:
    cfg = DataConfig(corpus=_corpus_file(tmp_path, "x" * 200), level="char", seq_len=50, val_fraction=0.1)
    with pytest.raises(DataError) as e:
        prepare_data(cfg, cache_dir=tmp_path / "tok")
    msg = str(e.value)
    assert "validation split" in msg and "20 char tokens" in msg and "51" in msg and "val_fraction" in msg


@pytest.mark.parametrize("level", ["char", "word"])
@pytest.mark.parametrize(("text", "seq_len"), [("hello world\n", 100), ("x " * 100, 50)])
def test_the_drivers_check_refuses_what_preparing_the_data_refuses(
        tmp_path: Path, level: str, text: str, seq_len: int) -> None:
    cfg = DataConfig(corpus=_corpus_file(tmp_path, text), level=level, seq_len=seq_len, val_fraction=0.1)
    with pytest.raises(DataError) as prepared:
        prepare_data(cfg, cache_dir=tmp_path / "tok")
    with pytest.raises(DataError) as checked:
        check_data(cfg, cache_dir=tmp_path / "tok")
    assert str(checked.value) == str(prepared.value)
    check_data(DataConfig(corpus=_corpus_file(tmp_path, TEXT), level=level, seq_len=16), cache_dir=tmp_path / "tok")


def test_bad_val_fraction(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="val_fraction"):
        _char_data(tmp_path, val_fraction=1.0)


def test_bpe_tokenizer_never_sees_validation_text(tmp_path: Path) -> None:
    # Validation is one novel word repeated: trained on everything, BPE would learn it whole.
    text = TEXT * 3 + " qzxv" * 150
    cfg = DataConfig(corpus=_corpus_file(tmp_path, text), level="bpe", vocab_size=300, seq_len=16, val_fraction=0.1)
    data = prepare_data(cfg, cache_dir=tmp_path / "tok")
    assert "qzxv" not in text[: data.train_chars]
    assert len(data.tokenizer.encode(" qzxv")) > 1
    leaky = build_tokenizer("bpe", text, vocab_size=300, cache_dir=tmp_path / "leaky")
    assert len(leaky.encode(" qzxv")) == 1  # the control: the test would catch a leak
    assert data.vocab_size <= 300
    assert data.tokenizer.decode(data.val.tolist()) == text[data.train_chars :]
    assert 0.1 < data.tokens_per_char_val <= 1.0
    assert len(list((tmp_path / "tok").glob("bpe-300-*.json"))) == 1
    again = prepare_data(cfg, cache_dir=tmp_path / "tok")  # served from the cache
    assert torch.equal(again.train, data.train) and torch.equal(again.val, data.val)


def test_word_level_tokens_per_char(tmp_path: Path) -> None:
    cfg = DataConfig(corpus=_corpus_file(tmp_path, TEXT * 2), level="word", vocab_size=50, seq_len=8)
    data = prepare_data(cfg, cache_dir=tmp_path / "tok")
    assert data.vocab_size <= 50
    assert 0.05 < data.tokens_per_char_val < 0.5  # words are several characters long


def test_builtin_default_config(tmp_path: Path) -> None:
    data = prepare_data(DataConfig(seq_len=32), cache_dir=tmp_path / "tok")
    assert data.corpus.name == "builtin"
    assert data.train_chars + data.val_chars == len(load_corpus("builtin").text)
    assert data.val.numel() == data.val_chars and data.train.numel() == data.train_chars


def test_shakespeare_char(shakespeare_path: Path, tmp_path: Path) -> None:
    cfg = DataConfig(corpus="shakespeare", level="char", seq_len=100)
    data = prepare_data(cfg, cache_dir=tmp_path / "tok", data_dir=shakespeare_path.parent)
    assert data.vocab_size == 66  # 65 characters in the train split + <unk>
    assert data.train.numel() == 1_003_854 and data.val.numel() == 111_540
    assert data.num_val_targets == 111_539
