"""rnn.corpus: builtin, Tiny Shakespeare (offline only) and file corpora."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from rnn import corpus as corpus_mod
from rnn.corpus import (
    SHAKESPEARE_BYTES,
    SHAKESPEARE_FILENAME,
    SHAKESPEARE_SHA256,
    CorpusError,
    cache_root,
    load_corpus,
)

# Port 9 (discard) on loopback: refused at once, so a download attempt fails without the network.
UNREACHABLE_URL = "http://127.0.0.1:9/input.txt"


# Every test away from the real ~/.cache and from a caller's RNN_DATA_DIR.
pytestmark = pytest.mark.usefixtures("isolated_cache")


def test_builtin_is_offline_sizeable_and_hashed() -> None:
    c = load_corpus("builtin")
    assert c.name == "builtin"
    assert "pydoc_data.topics" in c.source
    assert len(c.text.encode("utf-8")) > 300_000
    assert c.sha256 == hashlib.sha256(c.text.encode("utf-8")).hexdigest()
    assert "assert" in c.text  # English prose about Python, not an empty stub
    assert load_corpus("builtin") == c  # sorted-key join: the same text every time


def test_shakespeare_from_data_dir(shakespeare_path: Path) -> None:
    c = load_corpus("shakespeare", data_dir=shakespeare_path.parent)
    assert c.name == "shakespeare"
    assert Path(c.source) == shakespeare_path
    assert len(c.text.encode("utf-8")) == SHAKESPEARE_BYTES == 1_115_394
    assert c.sha256 == SHAKESPEARE_SHA256
    assert c.text.startswith("First Citizen:")


def test_shakespeare_from_env(shakespeare_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNN_DATA_DIR", str(shakespeare_path.parent))
    c = load_corpus("shakespeare", url=UNREACHABLE_URL)
    assert Path(c.source) == shakespeare_path
    assert c.sha256 == SHAKESPEARE_SHA256


def test_shakespeare_data_dir_wins_over_env(
    shakespeare_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "env"
    bad.mkdir()
    (bad / SHAKESPEARE_FILENAME).write_text("not shakespeare\n")
    monkeypatch.setenv("RNN_DATA_DIR", str(bad))
    c = load_corpus("shakespeare", data_dir=shakespeare_path.parent)
    assert c.sha256 == SHAKESPEARE_SHA256


def test_shakespeare_wrong_sha_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "d"
    bad.mkdir()
    (bad / SHAKESPEARE_FILENAME).write_text("First Citizen:\nthis is not the real file\n")
    with pytest.raises(CorpusError) as e:
        load_corpus("shakespeare", data_dir=bad, url=UNREACHABLE_URL)
    msg = str(e.value)
    assert str(bad / SHAKESPEARE_FILENAME) in msg
    assert SHAKESPEARE_SHA256 in msg


def test_shakespeare_offline_not_found_names_every_place(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given, env = tmp_path / "given", tmp_path / "env"
    given.mkdir()
    env.mkdir()
    monkeypatch.setenv("RNN_DATA_DIR", str(env))
    with pytest.raises(CorpusError) as e:
        load_corpus("shakespeare", data_dir=given, url=UNREACHABLE_URL, timeout=5)
    msg = str(e.value)
    cached = isolated_cache / "data" / SHAKESPEARE_FILENAME
    for place in (given / SHAKESPEARE_FILENAME, env / SHAKESPEARE_FILENAME, cached):
        assert str(place) in msg
    assert UNREACHABLE_URL in msg and "save it as" in msg
    assert not cached.exists()


def test_shakespeare_offline_via_module_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default URL is read at call time, so patching the module constant is enough."""
    monkeypatch.setattr(corpus_mod, "SHAKESPEARE_URL", UNREACHABLE_URL)
    with pytest.raises(CorpusError, match="not found"):
        load_corpus("shakespeare", data_dir=tmp_path)


def test_shakespeare_download_is_verified_and_cached(
    shakespeare_path: Path, tmp_path: Path, isolated_cache: Path
) -> None:
    # A file:// URL exercises the real download path (urllib, checksum, atomic write) offline.
    c = load_corpus("shakespeare", data_dir=tmp_path / "empty", url=shakespeare_path.as_uri())
    cached = isolated_cache / "data" / SHAKESPEARE_FILENAME
    assert Path(c.source) == cached
    assert cached.read_bytes() == shakespeare_path.read_bytes()
    assert [p.name for p in cached.parent.iterdir()] == [SHAKESPEARE_FILENAME]  # no temp files left
    again = load_corpus("shakespeare", url=UNREACHABLE_URL)  # now found in the cache
    assert again == c


def test_shakespeare_bad_download_is_not_kept(tmp_path: Path, isolated_cache: Path) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("a different text\n")
    with pytest.raises(CorpusError, match="Nothing was saved"):
        load_corpus("shakespeare", url=wrong.as_uri())
    assert not (isolated_cache / "data" / SHAKESPEARE_FILENAME).exists()


def test_path_corpus(tmp_path: Path) -> None:
    path = tmp_path / "my_notes.txt"
    path.write_text("héllo wörld\n", encoding="utf-8")
    c = load_corpus(str(path))
    assert c.name == "my_notes"
    assert c.text == "héllo wörld\n"
    assert c.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_path_corpus_missing(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="no such file") as e:
        load_corpus(str(path))
    assert str(path) in str(e.value)
    assert "builtin" in str(e.value)  # says what a corpus may be


def test_path_corpus_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    with pytest.raises(CorpusError, match="empty") as e:
        load_corpus(str(path))
    assert str(path) in str(e.value)


def test_path_corpus_not_utf8_names_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf" + "é au lait".encode("latin-1"))
    with pytest.raises(CorpusError) as e:
        load_corpus(str(path))
    msg = str(e.value)
    assert str(path) in msg and "UTF-8" in msg and "byte 3" in msg


def test_path_corpus_directory(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="a directory, not a file"):
        load_corpus(str(tmp_path))


def test_cache_root_env_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_root() == tmp_path / "cache"  # RNN_CACHE_DIR (set by isolated_cache)
    monkeypatch.delenv("RNN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "rnn-orchestrator"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "rnn-orchestrator"


def test_shakespeare_copy_in_cache_dir_is_found(
    shakespeare_path: Path, isolated_cache: Path
) -> None:
    (isolated_cache / "data").mkdir(parents=True)
    shutil.copy(shakespeare_path, isolated_cache / "data" / SHAKESPEARE_FILENAME)
    c = load_corpus("shakespeare", url=UNREACHABLE_URL)
    assert c.sha256 == SHAKESPEARE_SHA256
