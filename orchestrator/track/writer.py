"""The trackers' process: ``python -m orchestrator.track.writer FD``, started by a
:class:`~orchestrator.track.tracker.Tracker`, writes its sinks (TensorBoard's files, MLflow's
database or server) away from the driver, so their CPU time (a few seconds for a large sweep) and
their waits never take the driver's interpreter lock.

Its arguments after ``FD`` name modules to import before anything else (the sinks' libraries:
MLflow's client, for a server, is 1-1.5 s of CPU to import), so a driver that starts it early has them imported while
Ray starts. It reads pickled frames on stdin: first the sinks' openers, then lists of writes (a
function and its arguments, each applied to every sink), then None (or the end of stdin: a driver
that died or stopped before it had any sinks to give).
It answers on file descriptor ``FD``: its log records (the driver logs them as its own), each
sink that could not open or failed, how many writes it has done (the driver's measure of progress
while it waits at the end), and last its CPU time.

**Never fatal.** A sink that raises is logged once and turned off for the rest of the run; the
job folder keeps everything, and ``run`` (at its start) or ``export`` writes what a tracker lacks.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any, Optional

from orchestrator.track.sinks import FLUSH_S, Sink, first_line, sink_name

log = logging.getLogger(__name__)

#: The trackers' process yields the CPU to the driver (nice 0) and Ray's own processes, not to
#: the trainers (Ray starts its workers at nice 15).
NICE = 10

Write = tuple[Callable[..., Any], tuple[Any, ...]]


class _Replies(logging.Handler):
    """Sends this process's log records, and its other answers, to the driver."""

    def __init__(self, out: IO[bytes]) -> None:
        super().__init__(logging.INFO)
        self._out = out
        self._lock_out = threading.Lock()

    def send(self, *message: Any) -> None:
        with self._lock_out:
            try:
                pickle.dump(message, self._out)
                self._out.flush()
            except (BrokenPipeError, OSError):
                pass  # the driver is gone: nobody to tell

    def emit(self, record: logging.LogRecord) -> None:
        self.send("log", record.levelno, record.name, record.getMessage())


def main(argv: list[str]) -> int:
    with contextlib.suppress(OSError):
        os.nice(NICE)
    out = os.fdopen(int(argv[0]), "wb")
    replies = _Replies(out)
    logging.basicConfig(level=logging.INFO, handlers=[replies], force=True)
    writes: queue.Queue[Any] = queue.Queue()  # the openers, then lists of writes, then None
    threading.Thread(target=_read, args=(sys.stdin.buffer, writes), name="tracker-input", daemon=True).start()
    _preload(argv[1:])
    openers = writes.get()
    if openers is None:  # no sinks were ever given: nothing to write
        replies.send("closed", time.process_time())
        return 0
    sinks = _open(openers, replies)
    done, due = 0, None  # due: when what the sinks buffer is to be flushed (monotonic seconds)
    while True:
        try:
            batch: Optional[list[Write]] = writes.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
        except queue.Empty:  # nothing new for a while: write what is buffered
            _each(sinks, _flush, replies)
            due = None
            continue
        if batch is None:
            break
        for function, args in batch:
            _each(sinks, lambda sink: function(sink, *args), replies)  # noqa: B023  (called at once)
        done += len(batch)
        replies.send("done", done)
        if due is None:
            due = time.monotonic() + FLUSH_S
        elif time.monotonic() >= due:
            _each(sinks, _flush, replies)
            due = None
    _each(sinks, _flush, replies)
    for sink in sinks:
        _close(sink)
    replies.send("closed", time.process_time())
    return 0


def _read(stream: IO[bytes], writes: queue.Queue[Any]) -> None:
    """The driver's frames, until its None or the end of the stream (a driver that died)."""
    try:
        while True:
            frame = pickle.load(stream)
            writes.put(frame)
            if frame is None:
                return
    except (EOFError, OSError, pickle.UnpicklingError):
        writes.put(None)


def _preload(modules: list[str]) -> None:
    """Imports what the sinks will need; one that cannot be imported is the opener's to report."""
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001  (an opener says it, as the user's error)
            log.debug("tracking: preloading %s: %s", name, e)


def _open(openers: list[Callable[[], Sink]], replies: _Replies) -> list[Sink]:
    sinks: list[Sink] = []
    for opener in openers:
        try:
            sinks.append(opener())
        except Exception as e:  # noqa: BLE001  (never fatal: the job folder is the truth)
            name = sink_name(opener)
            replies.send("failed", name)
            log.warning("tracking: could not open %s (%s: %s); going on without it", name, type(e).__name__,
                        first_line(e))
    return sinks


def _each(sinks: list[Sink], write: Callable[[Sink], Any], replies: _Replies) -> None:
    for sink in list(sinks):
        try:
            write(sink)
        except Exception as e:  # noqa: BLE001
            sinks.remove(sink)
            replies.send("failed", sink.name)
            log.warning("tracking: %s failed (%s: %s); it is off for the rest of this run. The job folder has "
                        "every result: the next run, or `python -m orchestrator export DIR`, writes what it lacks",
                        sink.name, type(e).__name__, first_line(e))
            _close(sink)


def _flush(sink: Sink) -> None:
    sink.flush()


def _close(sink: Sink) -> None:
    """Close a sink; what goes wrong then is only worth a debug line (its writes are over)."""
    try:
        sink.close()
    except Exception as e:  # noqa: BLE001
        log.debug("tracking: closing %s: %s", sink.name, e)


if __name__ == "__main__":
    status = main(sys.argv[1:])
    # Everything is written, closed and answered by now. The interpreter's own teardown, with MLflow
    # and SQLAlchemy imported, takes about 0.7 s of CPU, and the driver waits for this process's exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
