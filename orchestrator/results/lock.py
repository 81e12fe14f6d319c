"""The job folder's lock: one writing run at a time.

:class:`JobLock` holds an exclusive ``flock`` on ``<job>/.lock`` for as long as a run writes
to the folder; a second run gets :class:`ResultsLockedError` at once, naming the holder's pid
and start time. Only local folders can be locked.
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import logging
import os
import socket
from typing import Any, Optional

from orchestrator.results.storage import (
    DamagedFolderError,
    ResultsError,
    cleanup_stale_temps,
    link_refused,
    open_storage,
    refuse_links,
)

__all__ = ["LOCK_FILE", "JobLock", "ResultsLockedError"]

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class ResultsLockedError(ResultsError):
    """Another process holds the job folder's lock."""

    def __init__(self, job_dir: str, pid: Optional[int], started_at: Optional[str]) -> None:
        self.job_dir, self.pid, self.started_at = job_dir, pid, started_at
        super().__init__(
            f"another run (pid {pid if pid is not None else 'unknown'}, started "
            f"{started_at or 'unknown'}) is writing to {job_dir}; wait for it or use a "
            "different output/name"
        )


class JobLock:
    """Exclusive ``flock`` on ``<job>/.lock`` for as long as a run writes to the folder.

    A second holder (another process, or another open of the file in this one) gets
    :class:`ResultsLockedError` at once rather than waiting. The lock file keeps the holder's
    pid and start time for that message; it is never deleted (deleting a lock file lets two
    processes lock two different files). Non-local filesystems cannot be locked: a warning
    is logged and nothing is guarded.
    """

    def __init__(self, job_dir: str | os.PathLike[str]) -> None:
        self._storage = open_storage(job_dir, None)
        self._fd: Optional[int] = None

    def acquire(self) -> JobLock:
        """Take the lock (creating the folder), or raise :class:`ResultsLockedError` when taken.

        Also removes temporary files that killed writers left behind. Returns ``self``.
        """
        if not self._storage.is_local:
            log.warning("%s is not a local folder: concurrent runs are not locked out", self._storage.root)
            return self
        root = self._storage.root
        path = os.path.join(root, LOCK_FILE)
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as e:  # a full disk is the environment's; a path that cannot be a folder is bad input
            kind = ResultsError if e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT) else DamagedFolderError
            raise kind(f"cannot create the job folder {root}: {e.strerror or e}") from e
        refuse_links(root)
        try:  # O_NOFOLLOW: a link made after the check above is refused too, never truncated through
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise link_refused(path) from e
            raise ResultsError(f"cannot create the lock file {path}: {e.strerror or e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ResultsLockedError(root, holder.get("pid"), holder.get("started_at")) from None
        except OSError as e:
            os.close(fd)
            raise ResultsError(f"cannot lock {path}: {e.strerror or e}") from e
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "started_at": now, "host": socket.gethostname()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        cleanup_stale_temps(root)  # safe: no other run writes here while we hold the lock
        return self

    def check(self) -> None:
        """Refuse now what :meth:`acquire` would refuse, creating nothing: a folder whose entries
        are links, or one another run holds (a run checks this before it starts Ray)."""
        root = self._storage.root
        if not self._storage.is_local or not os.path.isdir(root):
            return
        refuse_links(root)
        path = os.path.join(root, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise link_refused(path) from e
            return  # acquire() will say what is wrong
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            raise ResultsLockedError(root, holder.get("pid"), holder.get("started_at")) from None
        except OSError:
            pass
        finally:
            os.close(fd)

    def release(self) -> None:
        """Drop the lock; releasing a lock not held does nothing."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> JobLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}  # the holder has not written its pid yet
    return info if isinstance(info, dict) else {}
