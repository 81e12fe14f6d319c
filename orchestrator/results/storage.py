"""Atomic file storage for a job folder: a local folder or a pyarrow filesystem.

Every file is written atomically: into a temporary sibling named
``.<name>.<pid>.<random>.tmp``, then renamed over the target, so a kill at any moment leaves
the previous good version. On a local disk the file and its folder are fsynced, so the new
version survives a crash too. Temporary files of killed writers are removed by
:func:`cleanup_stale_temps` (which :class:`orchestrator.results.lock.JobLock` calls once it holds
the folder). :class:`ResultsError` is the one error this layer raises.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import posixpath
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Optional

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from orchestrator.processes import pid_alive

__all__ = ["ResultsError", "Storage", "cleanup_stale_temps", "open_storage"]

log = logging.getLogger(__name__)

_LOCAL_FS = pafs.LocalFileSystem()
# Matches the names write_atomic() gives its temporary files; the pid tells a live writer's
# file from one a killed writer left behind.
_TEMP_RE = re.compile(r"\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


class ResultsError(Exception):
    """A results folder cannot be read or written; the message names the path and the cause.

    As such, an environment problem (a full disk, a folder that cannot be written): exit status
    1. Its subclass :class:`DamagedFolderError` is bad input: exit status 2.
    """


class DamagedFolderError(ResultsError):
    """A job folder's file is damaged or of the wrong shape, one of its entries is a link, or the
    folder cannot be made where it was asked for (a path through a file): it cannot be used as it
    is (exit status 2); the message names the file."""


class Storage:
    """A job folder on the local disk (``fs`` is None: os calls, fsync, flock) or on a
    pyarrow filesystem (``fs.move`` replaces the file; atomic where the filesystem's rename is)."""

    def __init__(self, fs: Optional[pafs.FileSystem], root: str) -> None:
        self.fs, self.root = fs, root

    @property
    def is_local(self) -> bool:
        """True for a local folder (os calls, fsync, flock), False for a pyarrow filesystem."""
        return self.fs is None

    @property
    def _remote(self) -> pafs.FileSystem:
        """The pyarrow filesystem; only on the branches where :attr:`is_local` is False."""
        assert self.fs is not None
        return self.fs

    def location(self, rel: str) -> str:
        """Where ``rel`` (relative to the root; ``""`` is the root itself) lives."""
        if not rel:
            return self.root
        return os.path.join(self.root, rel) if self.is_local else posixpath.join(self.root, rel)

    def exists_abs(self, path: str) -> bool:
        """Whether ``path`` (absolute, on this storage's filesystem) exists."""
        if self.is_local:
            return os.path.exists(path)
        return self._remote.get_file_info(path).type != pafs.FileType.NotFound

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` (relative to the root) exists."""
        return self.exists_abs(self.location(rel))

    def read_bytes(self, rel: str) -> Optional[bytes]:
        """A file's content, or None when it does not exist."""
        path = self.location(rel)
        try:
            with (self.fs or _LOCAL_FS).open_input_stream(path) as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise ResultsError(f"cannot read {path}: {e}") from e

    @contextlib.contextmanager
    def open_input(self, rel: str) -> Iterator[Optional[pa.NativeFile]]:
        """A file's input stream, to read in chunks (nothing of it held here), or None when it
        does not exist."""
        path = self.location(rel)
        try:
            stream = (self.fs or _LOCAL_FS).open_input_stream(path)
        except (FileNotFoundError, NotADirectoryError):
            yield None
            return
        except OSError as e:
            raise ResultsError(f"cannot read {path}: {e}") from e
        with stream:
            yield stream

    def read_text(self, rel: str) -> Optional[str]:
        """A UTF-8 text file's content, or None when it does not exist."""
        data = self.read_bytes(rel)
        try:
            return None if data is None else data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DamagedFolderError(f"{self.location(rel)} is not UTF-8 text ({e.reason} at byte {e.start}); "
                                     f"{repair_hint(self.root)}") from e

    def read_table(self, rel: str, columns: Optional[list[str]] = None) -> Optional[pa.Table]:
        """A Parquet file as a table (only ``columns``, when given), or None when it does not exist."""
        path = self.location(rel)
        try:
            # Open once and read through that handle: given a path, pyarrow stats the file and
            # then opens it again, and a rename in between pairs the old size with the new file.
            with (self.fs or _LOCAL_FS).open_input_file(path) as f:
                return pq.read_table(f, columns=columns)
        except (FileNotFoundError, NotADirectoryError):  # nothing written yet
            return None
        except (OSError, pa.ArrowException) as e:
            raise DamagedFolderError(
                f"cannot read {path}: {e}; if it is damaged, {repair_hint(self.root)}"
            ) from e

    def read_ipc(self, rel: str) -> Optional[pa.Table]:
        """An Arrow IPC file as a table (read into memory), or None when it does not exist."""
        path = self.location(rel)
        try:
            with (self.fs or _LOCAL_FS).open_input_file(path) as f:
                return ipc.open_file(f).read_all()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, pa.ArrowException) as e:
            raise DamagedFolderError(
                f"cannot read {path}: {e}; if it is damaged, {repair_hint(self.root)}"
            ) from e

    def list_names(self, rel: str) -> list[str]:
        """The names of the plain files directly in folder ``rel`` (none when it does not exist)."""
        path = self.location(rel)
        try:
            if self.is_local:
                with os.scandir(path) as it:
                    return [e.name for e in it if e.is_file(follow_symlinks=False)]
            infos = self._remote.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            return [i.base_name for i in infos if i.type == pafs.FileType.File]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as e:
            raise ResultsError(f"cannot list {path}: {e.strerror or e}") from e

    def delete(self, rel: str) -> bool:
        """Delete the file ``rel``; False when it was already gone."""
        path = self.location(rel)
        try:
            if self.is_local:
                os.unlink(path)
            else:
                self._remote.delete_file(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise ResultsError(f"cannot delete {path}: {e.strerror or e}; check the output folder") from e
        return True

    def write_atomic(self, rel: str, write: Callable[[Any], Any]) -> None:
        """Write ``rel`` through ``write(file)`` into a temporary sibling, then rename it over."""
        final = self.location(rel)
        folder = os.path.dirname(final) if self.is_local else posixpath.dirname(final)
        tmp_name = f".{os.path.basename(final)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp = os.path.join(folder, tmp_name) if self.is_local else posixpath.join(folder, tmp_name)
        try:
            if self.is_local:
                os.makedirs(folder, exist_ok=True)
            else:
                self._remote.create_dir(folder, recursive=True)
        except OSError as e:
            raise ResultsError(
                f"cannot create the results folder {folder}: {e.strerror or e}; check that the "
                "output folder is writable or choose another output"
            ) from e
        try:
            try:
                if self.is_local:
                    # O_EXCL: never follow or reuse someone else's file; 0o666 & umask, not mkstemp's 0o600.
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                    with os.fdopen(fd, "wb") as f:
                        write(f)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(tmp, final)
                    _fsync_dir(folder)
                else:
                    with self._remote.open_output_stream(tmp) as f:
                        write(f)
                    self._remote.move(tmp, final)
            except BaseException:
                self._discard(tmp)
                raise
        except OSError as e:
            raise ResultsError(f"cannot write {final}: {e.strerror or e}; check the output folder") from e

    def write_text(self, rel: str, text: str) -> str:
        """Atomically write a UTF-8 text file; returns its location."""
        self.write_atomic(rel, lambda f: f.write(text.encode("utf-8")))
        return self.location(rel)

    def _discard(self, path: str) -> None:
        with contextlib.suppress(OSError):
            if self.is_local:
                os.unlink(path)
            else:
                self._remote.delete_file(path)

    def move_root(self, target: str) -> None:
        """Rename the whole root folder to ``target`` (an absolute path on this filesystem)."""
        try:
            if self.is_local:
                os.rename(self.root, target)
            else:
                self._remote.move(self.root, target)
        except OSError as e:
            raise ResultsError(f"cannot move {self.root} aside to {target}: {e.strerror or e}") from e


def _fsync_dir(folder: str) -> None:
    """Make the rename itself durable (a crash right after it could otherwise undo it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_storage(job_dir: str | os.PathLike[str], filesystem: Optional[pafs.FileSystem]) -> Storage:
    """The storage of ``job_dir``: a path on ``filesystem`` when given, else a local path or a
    pyarrow URI (a ``file://`` URI is treated as the local folder it names). Creates nothing."""
    text = os.fspath(job_dir)
    if filesystem is not None:
        fs, path = filesystem, text
    elif "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise ResultsError(f"cannot open the output {text}: {e}") from e
    else:
        return Storage(None, os.path.abspath(text))
    if isinstance(fs, pafs.LocalFileSystem):
        return Storage(None, os.path.abspath(path))
    return Storage(fs, path.rstrip("/"))


def repair_hint(job_dir: str) -> str:
    """What a message about a damaged file in ``job_dir`` tells the user to do."""
    return f"`python -m orchestrator repair {job_dir}` sets what is damaged aside and keeps the rest"


#: The job folder's own entries: none of them may be a link (the tool writes, truncates and
#: deletes inside them; through a link that would reach outside the folder).
OWN_ENTRIES = (".lock", "checkpoints", "parts", "search", "trials.parquet", "evals.parquet", "throughput.parquet",
               "manifest.json", "report.md", "report.html", "best.yaml")
#: Folders whose entries are folders the tool writes into (``checkpoints/<trial_id>/``).
_FOLDERS_OF_FOLDERS = ("checkpoints",)


def link_refused(path: str) -> DamagedFolderError:
    """The error for a job folder entry at ``path`` that is a symbolic link."""
    try:
        target = f" (to {os.readlink(path)})"
    except OSError:
        target = ""
    return DamagedFolderError(f"{path} is a symbolic link{target}; a job folder's own entries must be real files "
                              "and folders: remove the link, or move the job folder aside")


def refuse_links(root: str) -> None:
    """Refuse a local job folder whose own entries, or its checkpoint folders, are symbolic links.

    The folder itself may be reached through a link (a results root on another disk); what is
    inside it is the tool's, and a link there would let a write, a truncation or a delete reach
    a file outside it. Raises :class:`ResultsError` naming the first link found.
    """
    def is_link(path: str) -> bool:
        try:
            return os.path.islink(path)
        except OSError:
            return False

    for name in OWN_ENTRIES:
        path = os.path.join(root, name)
        if is_link(path):
            raise link_refused(path)
    for name in _FOLDERS_OF_FOLDERS:
        try:
            with os.scandir(os.path.join(root, name)) as it:
                link = next((e for e in it if e.is_symlink()), None)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise ResultsError(f"cannot list {os.path.join(root, name)}: {e.strerror or e}") from e
        if link is not None:
            raise link_refused(link.path)


def cleanup_stale_temps(root: str) -> None:
    """Remove temporary files left by killed writers (their pid is gone): in the job folder,
    its ``parts/`` folder (trials being committed) and each checkpoint folder."""
    checkpoints = os.path.join(root, "checkpoints")
    inside = [] if os.path.islink(checkpoints) else glob.glob(os.path.join(checkpoints, "*"))
    for folder in [root, os.path.join(root, "parts"), os.path.join(root, "search"), *inside]:
        if folder != root and os.path.islink(folder):  # never reach out of the job folder through a link
            continue
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            m = _TEMP_RE.fullmatch(name)
            if m and not pid_alive(int(m["pid"])):
                log.info("removing a temporary file left by a killed run: %s", name)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
