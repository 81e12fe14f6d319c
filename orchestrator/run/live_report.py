"""The report kept current while a sweep runs: rebuilt in the background as trials finish.

:class:`LiveReport` runs a daemon thread beside the driver's dispatch loop. Every
``poll_s`` it lists the job folder's trial parts (one directory listing, nothing opened); when
a trial was committed, or a running trial's heartbeat or evaluation arrived (its :class:`Board`),
since its last build and at least ``interval_s`` has passed, it rebuilds ``report.md`` and
``report.html`` with ``live=True`` (a banner, what each running trial is doing, a self-reload, no
text sample).
The dispatch loop never waits for it: the report's import and each build happen on this
thread (sharing the GIL, not waiting on it), and a failed build is logged and tried again at
the next commit. The runner closes it before it compacts the parts and builds the final
report, so the two never write at once. It lives in ``run/`` and imports
:mod:`orchestrator.report` only in its thread, so starting a sweep does not wait for
matplotlib and scipy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

from orchestrator.results import ResultsStore
from orchestrator.run.board import Board

__all__ = ["BUILD_SHARE", "LIVE_REPORT_S", "LiveReport"]

log = logging.getLogger(__name__)

#: At most one live rebuild this often (seconds).
LIVE_REPORT_S = 30.0
#: And never more often than every BUILD_SHARE x the last build's duration: at most ~10% of the time.
BUILD_SHARE = 10.0


class LiveReport:
    """Rebuild the report of ``job_dir`` as trials finish, at most every ``interval_s`` seconds.

    ``job_dir`` is the job folder, or the run's own store on it (then the report reads through it,
    sharing its folder object, instead of opening the folder again).
    Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        job_dir: str | os.PathLike[str] | ResultsStore,
        interval_s: float = LIVE_REPORT_S,
        poll_s: float = 2.0,
        build: Optional[Callable[..., Any]] = None,
        board: Optional[Board] = None,
    ) -> None:
        self._store = job_dir if isinstance(job_dir, ResultsStore) else ResultsStore(job_dir)
        self.job_dir = self._store.job_dir
        self.interval_s = interval_s
        self.poll_s = min(poll_s, interval_s)
        self.builds = 0
        self._build = build
        self._board = board  # the running trials' latest heartbeats: shown, and a reason to rebuild
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-report", daemon=True)

    def start(self) -> LiveReport:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop; an in-flight build is finished first (it writes atomically either way)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def __enter__(self) -> LiveReport:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _marker(self) -> int:
        try:
            return self._store.commit_marker()
        except Exception as e:  # noqa: BLE001  (a listing that fails now may work next time)
            log.debug("live report: cannot list %s: %s", self.job_dir, e)
            return -1

    def _loop(self) -> None:
        if self._build is None:
            # Imported here, in this thread: matplotlib and scipy take about a second to import,
            # which would otherwise delay the sweep's start on the driver.
            from orchestrator.report.render import build_report

            self._build = build_report
        built = self._marker()  # what is there at the start is what the last report showed
        seen = 0  # a board's version before its first update: any running trial is news
        last, spent = time.monotonic(), 0.0
        while not self._stop.wait(self.poll_s):
            # A build reads every trial, so it grows with the sweep; waiting at least
            # BUILD_SHARE times its last duration keeps its share of the driver's time bounded
            # (thousands of trials) while a small sweep still refreshes every interval_s.
            if time.monotonic() - last < max(self.interval_s, BUILD_SHARE * spent):
                continue
            marker = self._marker()
            version, running = self._board.snapshot() if self._board is not None else (seen, [])
            if marker == -1 or (marker == built and version == seen):
                continue
            t0 = time.monotonic()
            try:
                if self._board is not None:
                    self._build(self._store, live=True, running=running)
                else:
                    self._build(self._store, live=True)
                self.builds += 1
            except Exception as e:  # noqa: BLE001  (the sweep matters more than a live page)
                log.warning("live report: could not rebuild the report of %s: %s", self.job_dir, e)
            built, seen, last = marker, version, time.monotonic()
            spent = last - t0
