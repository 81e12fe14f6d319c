"""Processes: whether one is alive (how stale temporary files and scratch folders are told apart
from those of a writer still running), and the ``run`` supervisor's hold on what its driver leaves.

An embedded Ray is a tree of processes under the driver: Ray binds the GCS and the raylet to the
driver's life (``PR_SET_PDEATHSIG``), but the agents the raylet starts (the dashboard agent, the
runtime-env agent) and its workers only notice their raylet is gone by polling, and then try to
tell a GCS that is gone too: after a SIGKILL of the driver they were seen living about 70 s. The
supervisor therefore makes itself a child subreaper (Linux): whatever its driver's descendants
are left orphaned is re-parented to it rather than to init, and :func:`end_orphans` ends them as
soon as the driver has ended.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from collections.abc import Collection

__all__ = ["become_subreaper", "children", "end_orphans", "pid_alive"]

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36


def pid_alive(pid: int) -> bool:
    """True while process ``pid`` exists (someone else's included); False once it is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux 3.4+); True when it is."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is ``pid``, from ``/proc`` (empty elsewhere)."""
    found = []
    with contextlib.suppress(OSError):
        names = os.listdir("/proc")
        for name in names:
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue  # it ended meanwhile
            fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
            if len(fields) > 1 and int(fields[1]) == pid and fields[0] != b"Z":
                found.append(int(name))
    return found


def end_orphans(exclude: Collection[int] = (), grace_s: float = 2.0) -> list[int]:
    """SIGTERM every child of this process but ``exclude`` (those it had before the driver), and
    every descendant of those, SIGKILL those still alive after ``grace_s``, and reap them; returns
    the pids it signalled. Call it once the driver has been waited for: what is left are its
    orphaned descendants, re-parented here by :func:`become_subreaper`. Their own children are
    signalled too: a raylet that is slow to end would otherwise hand its agents and workers over
    only after this has returned, and they would outlive it, re-parented to init."""
    me = os.getpid()
    ended: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = _subtrees([p for p in children(me) if p not in exclude])
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        ended += [p for p in left if p not in ended]
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < deadline and _reap(left):
            time.sleep(0.05)
        if not any(p in children(me) for p in left):
            break
    _reap(ended)
    if ended:
        log.debug("ended %d orphaned process(es) of the driver: %s", len(ended), ended)
    return ended


def _subtrees(roots: list[int]) -> list[int]:
    """``roots`` and all their live descendants, parents first."""
    found = list(roots)
    for pid in found:  # grows as it goes: a breadth-first walk
        found += [c for c in children(pid) if c not in found]
    return found


def _reap(pids: Collection[int]) -> bool:
    """Collect those of ``pids`` that have ended; True while one is still running."""
    running = False
    for pid in pids:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue  # reaped already, or not ours
        running = running or done == 0
    return running
