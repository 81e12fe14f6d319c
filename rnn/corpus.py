"""Where training text comes from: a built-in offline corpus, Tiny Shakespeare, or a file.

``load_corpus`` resolves a name or a path to a :class:`Corpus` (the text plus the
SHA-256 of its UTF-8 bytes, which results and checkpoints record so a number can be
traced back to the exact text it was measured on).

- ``builtin``: the English prose of the standard library's ``pydoc_data.topics`` (about
  465 K characters). Needs no download, so it is the quickstart default. Its hash changes
  between Python versions; the recorded ``sha256`` says which text a run used.
- ``shakespeare``: Tiny Shakespeare (1,115,394 bytes), looked up locally and downloaded
  (then verified) only if it is nowhere to be found.
- anything else: a path to a UTF-8 text file; its name is the file stem. To load a file
  literally called ``builtin`` or ``shakespeare``, pass ``./builtin``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from rnn.atomic import atomic_write
from rnn.paths import not_a_file

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

SHAKESPEARE_FILENAME = "tinyshakespeare.txt"
SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1_115_394

#: Environment variable naming a directory that holds ``tinyshakespeare.txt``.
DATA_DIR_ENV = "RNN_DATA_DIR"
#: Environment variable overriding the cache base (default ``~/.cache/rnn-orchestrator``).
CACHE_DIR_ENV = "RNN_CACHE_DIR"

BUILTIN_CORPORA: tuple[str, ...] = ("builtin", "shakespeare")


class CorpusError(ValueError):
    """A corpus cannot be loaded; the message names the file and what to do about it."""


@dataclass(frozen=True)
class CorpusInfo:
    """Which text, without the text: what a run keeps once the text is encoded."""

    name: str
    source: str  # where the text came from: a file path or a description
    sha256: str  # the hex digest of the text's UTF-8 bytes


@dataclass(frozen=True)
class Corpus:
    """A loaded text. ``sha256`` is the hex digest of ``text.encode("utf-8")``."""

    name: str
    source: str  # where the text came from: a file path or a description
    text: str
    sha256: str

    def info(self) -> CorpusInfo:
        return CorpusInfo(self.name, self.source, self.sha256)


def cache_root() -> Path:
    """The cache base: ``$RNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnn-orchestrator``,
    else ``~/.cache/rnn-orchestrator``. Read at call time, never at import time."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "rnn-orchestrator"


def load_corpus(
    name_or_path: str,
    data_dir: Optional[PathLike] = None,
    *,
    url: Optional[str] = None,
    timeout: float = 30.0,
) -> Corpus:
    """Load ``builtin``, ``shakespeare`` or a UTF-8 text file.

    Args:
        name_or_path: ``"builtin"``, ``"shakespeare"``, or a path to a UTF-8 text file.
        data_dir: first directory searched for ``tinyshakespeare.txt`` (then
            ``$RNN_DATA_DIR``, then ``<cache_root()>/data``). Ignored for other corpora.
        url: where Tiny Shakespeare is downloaded from when no local copy exists
            (default ``SHAKESPEARE_URL``, read at call time).
        timeout: seconds before the download gives up.

    Raises:
        CorpusError: the file is missing, empty, not UTF-8, or fails its checksum, or the
            download failed; the message says where to put the file.
    """
    if name_or_path == "builtin":
        return _load_builtin()
    if name_or_path == "shakespeare":
        return _load_shakespeare(data_dir, url=url or SHAKESPEARE_URL, timeout=timeout)
    return _load_path(Path(name_or_path).expanduser())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _load_builtin() -> Corpus:
    try:
        # Lazy import: pydoc_data is ~0.5 MB of strings that most runs never need.
        from pydoc_data.topics import topics
    except ImportError as e:  # some distro Pythons split pydoc_data into a separate package
        raise CorpusError(
            "corpus 'builtin': this Python has no pydoc_data.topics module (some Linux "
            "distributions ship it separately, e.g. Debian's python3-doc); install it, or use "
            "corpus 'shakespeare' or a path to a UTF-8 text file instead"
        ) from e
    # Sorted keys: dict order is an implementation detail; the text must be reproducible.
    text = "".join(topics[key] for key in sorted(topics))
    version = ".".join(map(str, sys.version_info[:3]))
    corpus = Corpus("builtin", f"pydoc_data.topics (Python {version})", text, _sha256(text.encode("utf-8")))
    logger.debug("loaded builtin corpus: %d chars, sha256 %s", len(text), corpus.sha256)
    return corpus


def _shakespeare_candidates(data_dir: Optional[PathLike]) -> list[Path]:
    """Directories searched for Tiny Shakespeare, in order."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    env_dir = os.environ.get(DATA_DIR_ENV)
    if env_dir:
        dirs.append(Path(env_dir).expanduser())
    dirs.append(cache_root() / "data")
    return dirs


def _load_shakespeare(data_dir: Optional[PathLike], *, url: str, timeout: float) -> Corpus:
    dirs = _shakespeare_candidates(data_dir)
    for d in dirs:
        path = d / SHAKESPEARE_FILENAME
        if path.is_file():
            data = path.read_bytes()
            digest = _sha256(data)
            if digest != SHAKESPEARE_SHA256:
                # A found-but-wrong file is an error rather than a reason to look further:
                # silently training on another text would make results incomparable.
                raise CorpusError(
                    f"corpus 'shakespeare': {path} has sha256 {digest} ({len(data)} bytes); "
                    f"expected {SHAKESPEARE_SHA256} ({SHAKESPEARE_BYTES} bytes). Replace it with "
                    f"a fresh copy from {SHAKESPEARE_URL}, or delete it to download again"
                )
            return Corpus("shakespeare", str(path), data.decode("utf-8"), digest)

    # Nowhere on disk: download into the cache directory (always the last candidate).
    target = dirs[-1] / SHAKESPEARE_FILENAME
    try:
        data = _download(url, timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        looked = "\n".join(f"  - {d / SHAKESPEARE_FILENAME}" for d in dirs)
        raise CorpusError(
            f"corpus 'shakespeare': {SHAKESPEARE_FILENAME} was not found in any of:\n{looked}\n"
            f"and downloading it from {url} failed ({e}). Download {SHAKESPEARE_URL} "
            f"by hand and save it as {target} (or as {SHAKESPEARE_FILENAME} in a directory "
            f"named by ${DATA_DIR_ENV})"
        ) from e
    digest = _sha256(data)
    if digest != SHAKESPEARE_SHA256:
        # Checked before anything is written, so a bad download never lands in the cache.
        raise CorpusError(
            f"corpus 'shakespeare': the file downloaded from {url} has sha256 {digest} "
            f"({len(data)} bytes); expected {SHAKESPEARE_SHA256} ({SHAKESPEARE_BYTES} bytes). "
            f"Nothing was saved; check the URL or save a verified copy as {target}"
        )
    try:
        atomic_write(target, lambda f: f.write(data))
    except OSError as e:
        raise CorpusError(
            f"corpus 'shakespeare': downloaded it but could not save it to {target} ({e}); "
            f"set ${CACHE_DIR_ENV} to a writable directory"
        ) from e
    logger.info("downloaded Tiny Shakespeare to %s", target)
    return Corpus("shakespeare", str(target), data.decode("utf-8"), digest)


def _download(url: str, timeout: float) -> bytes:
    logger.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (fixed https URL by default)
        return response.read()


#: ``validate`` judges a corpus file by its size and at most this many of its first bytes.
HEAD_BYTES = 1 << 20


def corpus_file_problem(path: PathLike, *, head_bytes: int = HEAD_BYTES) -> Optional[str]:
    """What makes a corpus file unusable, judged from its size and first ``head_bytes`` bytes
    (the rest is not read); None when nothing shows there (``load_corpus`` reads it all and may
    still refuse it, say for a bad byte further on)."""
    path = Path(path).expanduser()
    what = not_a_file(path)
    if what is not None:
        return what
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(head_bytes)
    except OSError as e:
        return f"not readable ({e.strerror or e})"
    if size == 0:
        return "empty"
    return _text_problem(head, complete=size <= head_bytes)


def _text_problem(data: bytes, complete: bool = True) -> Optional[str]:
    """Why ``data`` is not UTF-8 text, or None; an incomplete character at the end of a file's
    first bytes (``complete`` False) is not a problem."""
    nul = data.find(b"\0")
    if nul >= 0:
        return f"binary, not text (a NUL byte at offset {nul})"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        if complete or e.end < len(data) or e.reason != "unexpected end of data":
            return (f"not valid UTF-8: byte {e.start} (0x{data[e.start]:02x}) {e.reason}; convert it, "
                    "e.g. `iconv -f latin1 -t utf-8 FILE > out.txt`")
    return None


def _load_path(path: Path) -> Corpus:
    hint = "(corpus must be 'builtin', 'shakespeare', or a path to a UTF-8 text file)"
    what = not_a_file(path)
    if what is not None:
        raise CorpusError(f"corpus {path}: {what} {hint}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorpusError(f"corpus file {path} cannot be read: {e}") from e
    if not data:
        raise CorpusError(f"corpus file {path} is empty; point the spec at a file with text in it")
    problem = _text_problem(data)
    if problem is not None:
        raise CorpusError(f"corpus file {path} is {problem.replace('FILE', str(path))}")
    text = data.decode("utf-8")
    return Corpus(path.stem, str(path.resolve()), text, _sha256(data))
