"""``run`` as two processes: a small supervisor, and the driver it forks.

Ray's C++ client ends its process without unwinding when it loses this machine's Ray node or
the cluster's head: ``QuickExit()`` / ``_Exit(1)`` after "The connection to the plasma store is
failed. Terminate the process." (the node's raylet died while the driver read or wrote an
object) or "Failed to connect to GCS within 60 seconds". A driver ended that way cannot say why.
So the command line forks ``run`` before anything imports Ray: the child is the driver, and the
parent, which never imports Ray, waits for it and speaks when it could not.

- The driver hands the supervisor the exit status it chose through a pipe, once its command has
  returned. A driver that ends without doing so ended abruptly: the supervisor has the CLI print
  one error line saying how, with the resume advice, and exits 1. Nothing finished is lost: a trial's part
  is written whole before it counts as finished, and the next run folds the parts in.
- Signals sent to the supervisor alone (``kill PID``, ``Popen.send_signal``) are forwarded to
  the driver: SIGINT, SIGTERM, SIGHUP. Both share one process group, so a terminal's Ctrl-C or
  ``ray job stop`` reaches each, and the driver gets it twice: directly, and the supervisor's
  copy. Where the system has real-time signals (Linux), the copy is sent as one of its own
  (:data:`FORWARDED_AS`), so the driver pairs each copy with the signal it got directly, however
  late either arrives (:class:`orchestrator.run.connect.SignalCounts`); elsewhere the copy is the
  same signal, and the same signal twice within :data:`orchestrator.run.connect.REPEAT_WINDOW_S`
  counts as one. Outside the driver's stop handlers, a copy acts as the signal it stands for.
- A driver whose supervisor is gone (``kill -9`` of the supervisor alone) ends itself at once:
  it watches a pipe whose write end only the supervisor holds.
- On Linux the supervisor is a child subreaper: the processes the driver's descendants leave
  orphaned (an embedded Ray's agents and workers, whose GCS and raylet die with the driver) are
  re-parented to it, and once the driver has ended it ends them (SIGTERM, then SIGKILL after 2 s)
  instead of leaving them to linger (:mod:`orchestrator.processes`). A SIGKILL of the supervisor
  itself leaves them to init, as before.

Where ``os.fork`` does not exist, the command runs in this process, as before.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable

from orchestrator.errors import ExitCode
from orchestrator.processes import become_subreaper, children, end_orphans

#: The signals the supervisor passes on to the driver.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: The signal each is forwarded as, where real-time signals exist (empty: forwarded as itself).
FORWARDED_AS: dict[int, int] = (
    {int(sig): signal.SIGRTMIN + i for i, sig in enumerate(FORWARDED)} if hasattr(signal, "SIGRTMIN") else {})
#: The signal a forwarded copy stands for.
ORIGINAL: dict[int, int] = {copy: sig for sig, copy in FORWARDED_AS.items()}


def supervise(command: Callable[[], int], say: Callable[[str], None]) -> int:
    """Run ``command`` in a forked driver process and return the exit status to use.

    In the driver, this returns ``command()``'s status after telling the supervisor; in the
    supervisor, it returns that status once the driver has ended (or 1 after passing ``say``
    one line on how it ended, if it ended abruptly: the CLI prints it as its error line).
    Call it only from a process entry point: both processes return from it.
    """
    if not hasattr(os, "fork"):
        return command()
    chosen_r, chosen_w = os.pipe()
    alive_r, alive_w = os.pipe()
    # What the driver's descendants leave orphaned (an embedded Ray's agents and workers, after a
    # SIGKILL of the driver) is re-parented here and ended once the driver has ended.
    subreaper = become_subreaper()
    before = set(children(os.getpid())) if subreaper else set()
    sys.stdout.flush()
    sys.stderr.flush()
    # Signals wait until each side has its own handlers: the forwarding ones are the parent's only.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (*FORWARDED, *ORIGINAL))
    pid = os.fork()
    if pid == 0:
        os.close(chosen_r)
        os.close(alive_w)
        for copy in ORIGINAL:
            signal.signal(copy, _act_as_original)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        threading.Thread(target=_end_with_supervisor, args=(alive_r,), name="supervisor-watch", daemon=True).start()
        code = int(ExitCode.FAILED)
        try:
            code = int(command())
            return code
        finally:  # a traceback is a chosen end too: Python printed why
            os.write(chosen_w, bytes([code & 0xFF]))
            os.close(chosen_w)
    os.close(chosen_w)
    os.close(alive_r)
    try:
        return _wait_for_driver(pid, chosen_r, blocked, say)
    finally:
        if subreaper:
            end_orphans(exclude=before)


def _act_as_original(signum: int, frame: object) -> None:
    """A forwarded copy, outside the driver's stop handlers: the signal it stands for."""
    signal.raise_signal(ORIGINAL[signum])


def _end_with_supervisor(alive_r: int) -> None:
    os.read(alive_r, 1)  # returns (EOF) only once the supervisor's process is gone
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_driver(pid: int, chosen_r: int, blocked: set[int | signal.Signals], say: Callable[[str], None]) -> int:
    forwarded: set[int] = set()

    def forward(signum: int, frame: object) -> None:
        forwarded.add(signum)
        try:
            os.kill(pid, FORWARDED_AS.get(signum, signum))
        except ProcessLookupError:
            pass  # it has just ended; waitpid reports how

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    try:
        _, status = os.waitpid(pid, 0)  # retried after each forwarded signal (PEP 475)
    finally:
        for forwarded_sig, handler in previous.items():
            signal.signal(forwarded_sig, handler)
    os.set_blocking(chosen_r, False)
    try:
        chosen = os.read(chosen_r, 16)
    except BlockingIOError:
        chosen = b""
    os.close(chosen_r)
    if chosen:
        return chosen[-1]
    if os.WIFSIGNALED(status):
        sig = ORIGINAL.get(os.WTERMSIG(status), os.WTERMSIG(status))
        if sig in forwarded:  # it ended by the signal it was sent, before it could handle it
            return 128 + sig
        cause = " (the system's out-of-memory killer, or a kill -9)" if sig == signal.SIGKILL else ""
        what = f"the driver process (pid {pid}) was killed by {signal.Signals(sig).name}{cause}"
    else:
        what = (f"lost the Ray cluster: the driver process (pid {pid}) ended abruptly inside Ray (exit status "
                f"{os.waitstatus_to_exitcode(status)}), as Ray ends a driver when this machine's Ray node or the "
                "cluster's head (GCS) goes away")
    say(f"{what}; every finished trial is on disk: run the same command again to resume (once the cluster is back)")
    return int(ExitCode.FAILED)
