"""``run``'s supervisor (orchestrator.supervise): real forked processes, real signals, no Ray.

The driver Ray ends without unwinding is in test_cluster.py (a real head dying under it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, eventually
from orchestrator.run.connect import SignalCounts
from orchestrator.supervise import FORWARDED_AS

_PROGRAM = """
import os, signal, sys, threading, time
from orchestrator.cli import print_error
from orchestrator.supervise import supervise
from orchestrator.run.connect import stop_on_signals

def driver():
    how = sys.argv[1]
    if how not in ("stop", "forever", "stop-slowly"):
        print("driver", os.getpid(), flush=True)
    if how == "choose":
        return 3
    if how == "abrupt":
        os._exit(1)  # what Ray's QuickExit does
    if how == "oom":
        os.kill(os.getpid(), signal.SIGKILL)
    if how in ("stop", "forever", "stop-slowly"):
        stop = threading.Event()
        with stop_on_signals(stop):
            print("driver", os.getpid(), flush=True)  # its handlers are in place
            while not stop.is_set():
                time.sleep(0.02)
            time.sleep(4.0 if how == "stop-slowly" else 1.5)  # a second signal now would raise KeyboardInterrupt
        print("stopped once", flush=True)
        if how == "forever":
            time.sleep(60)
        return 130
    raise AssertionError(how)

raise SystemExit(supervise(driver, say=print_error))
"""


def _start(how: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", _PROGRAM, how], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().split()
    assert first[0] == "driver", first
    return proc, int(first[1])


def _finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return out


def _alive(pid: int) -> bool:
    """Running (a zombie whose new parent has not reaped it yet counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_status_the_driver_chose_is_the_exit_status() -> None:
    proc, driver = _start("choose")
    out = _finish(proc)
    assert proc.returncode == 3 and driver != proc.pid and "error" not in out


def test_a_driver_that_ends_without_unwinding_gets_its_error_line() -> None:
    proc, driver = _start("abrupt")
    out = _finish(proc)
    assert proc.returncode == 1
    assert out.strip() == (
        f"error: lost the Ray cluster: the driver process (pid {driver}) ended abruptly inside Ray (exit status 1), "
        "as Ray ends a driver when this machine's Ray node or the cluster's head (GCS) goes away; every finished "
        "trial is on disk: run the same command again to resume (once the cluster is back)"
    )


def test_a_driver_killed_from_outside_is_named_as_such() -> None:
    proc, driver = _start("oom")
    out = _finish(proc)
    assert proc.returncode == 1
    assert f"error: the driver process (pid {driver}) was killed by SIGKILL" in out and "run the same command" in out


@pytest.mark.slow
def test_a_signal_sent_to_the_supervisor_alone_reaches_the_driver() -> None:
    proc, _ = _start("stop")
    proc.send_signal(signal.SIGTERM)
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert "SIGTERM received" in out and "stopped once" in out and "Traceback" not in out


@pytest.mark.slow
def test_a_signal_to_the_whole_group_counts_once_in_the_driver() -> None:
    # A terminal's Ctrl-C: both processes get it, and the supervisor forwards its copy too.
    proc, _ = _start("stop")
    os.killpg(proc.pid, signal.SIGINT)
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert out.count("SIGINT received") == 1 and "stopped once" in out and "KeyboardInterrupt" not in out


@pytest.mark.slow
@pytest.mark.skipif(not FORWARDED_AS, reason="no real-time signals: a forwarded copy is the signal itself")
def test_a_forwarded_copy_however_late_is_not_a_second_signal() -> None:
    # A loaded machine: the supervisor's copy of a group Ctrl-C arrives seconds after the driver's own.
    proc, driver = _start("stop-slowly")
    os.kill(driver, signal.SIGINT)
    time.sleep(2.0)  # longer than any window a repeat could be merged within
    os.kill(driver, FORWARDED_AS[signal.SIGINT])
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert out.count("SIGINT received") == 1 and "stopped once" in out and "KeyboardInterrupt" not in out


@pytest.mark.skipif(not FORWARDED_AS, reason="no real-time signals: a forwarded copy is the signal itself")
def test_each_signal_pairs_with_its_forwarded_copy_in_either_order() -> None:
    copy = FORWARDED_AS[signal.SIGINT]
    for order, events in ([[signal.SIGINT, copy], [signal.SIGINT]],
                          [[copy, signal.SIGINT], [signal.SIGINT]],
                          [[signal.SIGINT, signal.SIGINT, copy, copy], [signal.SIGINT, signal.SIGINT]],
                          [[copy, copy], [signal.SIGINT, signal.SIGINT]],  # to the supervisor alone, twice
                          [[signal.SIGTERM, copy, signal.SIGINT], [signal.SIGTERM, signal.SIGINT]]):
        counts = SignalCounts()
        assert [s for s in map(counts.arrived, order) if s is not None] == events, order


def test_the_driver_ends_when_its_supervisor_is_killed() -> None:
    proc, driver = _start("forever")
    proc.send_signal(signal.SIGKILL)  # the supervisor alone
    proc.wait()
    if not eventually(lambda: not _alive(driver), 10):
        os.kill(driver, signal.SIGKILL)
        pytest.fail("the driver outlived its supervisor")
    _finish(proc)
