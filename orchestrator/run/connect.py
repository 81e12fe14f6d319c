"""Connecting to Ray: join a cluster or start an embedded one, check an address first, signals.

``--address`` wins; otherwise ``RAY_ADDRESS`` (set inside ``ray job submit``) joins that
cluster; otherwise a single-node Ray starts in this process, bound to loopback. An address that
does not answer is a :class:`UsageError` within about :data:`PROBE_TIMEOUT_S` seconds, found
before anything is locked or written (``ray.init`` itself would retry for minutes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Optional

from orchestrator.errors import UsageError

log = logging.getLogger(__name__)

#: How long an address may take to accept a TCP connection before it counts as unreachable.
PROBE_TIMEOUT_S = 15.0
#: A signal repeated within this many seconds is one signal delivered twice (see stop_on_signals).
REPEAT_WINDOW_S = 1.0


def cluster_address(address: Optional[str]) -> Optional[str]:
    """The address ``run`` joins, or None for an embedded local Ray."""
    chosen = address or os.environ.get("RAY_ADDRESS") or None
    return None if chosen in (None, "local") else chosen


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`UsageError` unless something accepts TCP connections at ``address``."""
    where = "--address" if address != os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS"
    if address.startswith("ray://"):
        hostport: Optional[str] = address[len("ray://"):].split("/")[0]
    else:
        try:
            from ray._private.services import canonicalize_bootstrap_address

            hostport = canonicalize_bootstrap_address(address)
        except Exception as e:  # noqa: BLE001  (Ray raises ValueError, ConnectionError, ...)
            raise UsageError(f"{where} {address!r}: {e}") from e
        if hostport is None:
            raise UsageError(f"{where} {address!r}: no running Ray cluster was found on this machine; "
                             "start one with `ray start --head` or pass its host:port")
    host, _, port = (hostport or "").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"{where} {address!r} is not host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001)")
    deadline = time.monotonic() + timeout_s
    last: Optional[OSError] = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.5, deadline - time.monotonic())):
                return
        except OSError as e:
            last = e
            if isinstance(e, ConnectionRefusedError):
                break  # nothing listens there: no point in waiting
            time.sleep(0.5)
    why = last.strerror if last is not None and last.strerror else (str(last) if last else "no answer")
    raise UsageError(
        f"{where} {address!r}: cannot reach a Ray cluster at {host}:{port} ({why}); check the address and "
        "that the head is running (`ray status` on it)"
    )


def connect(address: Optional[str]) -> bool:
    """Connect to Ray; returns True when an embedded local instance was started."""
    import ray

    target = cluster_address(address)
    if target is not None:
        ray.init(address=target, log_to_driver=False, logging_level=logging.WARNING)
        log.info("connected to the Ray cluster at %s", target)
        return False
    # Loopback only, and no token auth: a token file left by an embedded Ray would otherwise
    # make a later `ray start` demand a token from every client.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    log.info("started a local Ray instance with %d CPUs", os.cpu_count() or 1)
    return True


def gcs_client() -> Any:
    """This process's client of the cluster's GCS: Ray's own, connected by :func:`connect`.

    Its calls take a timeout, unlike ``ray.nodes()`` and friends, which wait on a dead head.
    """
    import ray

    return ray._private.worker.global_worker.gcs_client


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (a second one raises KeyboardInterrupt).

    The same signal again within :data:`REPEAT_WINDOW_S` counts once: one Ctrl-C, or one
    ``ray job stop``, reaches the driver twice, directly and forwarded by the supervisor
    (:mod:`orchestrator.supervise`). Installed *after* ``ray.init``, which puts in a handler of
    its own that aborts the process.
    """
    last: dict[int, float] = {}

    def on_signal(signum: int, frame: object) -> None:
        now = time.monotonic()
        repeat = now - last.get(signum, -math.inf) < REPEAT_WINDOW_S
        last[signum] = now
        if repeat:
            return
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s received: stopping running trials, keeping what finished (again to force)",
                    signal.Signals(signum).name)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
