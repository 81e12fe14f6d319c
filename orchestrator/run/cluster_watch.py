"""Noticing that the Ray cluster itself is gone, without stalling the dispatch loop.

A thread probes the GCS every :data:`PROBE_EVERY_S` seconds (each probe bounded by the same
timeout), so a head that stops answering costs the loop nothing while the watch waits on it.
After :data:`LOST_AFTER_S` seconds of silence, :meth:`ClusterWatch.check` (called by the loop
each turn) raises :class:`~orchestrator.run.backend.ClusterLostError`, and the run ends cleanly:
parts compacted, manifest written, one error line from the CLI.

That must happen before Ray's own clients give up: they end the process, without unwinding,
once the GCS has been unreachable for ``gcs_rpc_server_reconnect_timeout_s`` (60 s unless
``RAY_gcs_rpc_server_reconnect_timeout_s`` says otherwise), so the silence allowed here is at
most half of that. A driver Ray ends anyway (its main thread was inside Ray, or this machine's
node died under it) is reported by the supervisor, :mod:`orchestrator.supervise`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Optional

from orchestrator.run.backend import ClusterLostError, first_line
from orchestrator.run.connect import gcs_client

log = logging.getLogger(__name__)

#: How often the GCS is probed (and the longest one probe may take).
PROBE_EVERY_S = 5.0
#: Silence after which the dispatch loop is told the cluster is lost.
LOST_AFTER_S = 20.0
#: Ray's ``gcs_rpc_server_reconnect_timeout_s`` default (Ray 2.x).
RAY_GCS_RECONNECT_TIMEOUT_S = 60.0


def ray_gcs_timeout_s() -> float:
    """How long Ray's clients in this process wait for the GCS before they end the process."""
    raw = os.environ.get("RAY_gcs_rpc_server_reconnect_timeout_s", "")
    try:
        return float(raw) if raw.strip() else RAY_GCS_RECONNECT_TIMEOUT_S
    except ValueError:
        return RAY_GCS_RECONNECT_TIMEOUT_S


class ClusterWatch:
    """Probes the cluster from its own thread; see the module docstring.

    Args:
        probe: one round trip to the cluster that raises on failure; its argument is the timeout.
        every_s: the probe interval.
        lost_after_s: silence after which :meth:`check` raises (default: :data:`LOST_AFTER_S`,
            or half of Ray's own timeout if that is less).
    """

    def __init__(
        self,
        probe: Callable[[float], object],
        *,
        every_s: float = PROBE_EVERY_S,
        lost_after_s: Optional[float] = None,
    ) -> None:
        self._probe = probe
        self._every_s = every_s
        self._lost_after_s = lost_after_s if lost_after_s is not None else min(LOST_AFTER_S, ray_gcs_timeout_s() / 2)
        self._last_ok = time.monotonic()
        self._error = ""
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="cluster-watch", daemon=True)

    @classmethod
    def for_connected_ray(cls) -> ClusterWatch:
        """A started watch over the GCS this process is connected to (after ``ray.init``)."""
        gcs = gcs_client()

        def probe(timeout_s: float) -> object:
            return gcs.internal_kv_exists(b"rnn-orchestrator-probe", None, timeout=timeout_s)

        return cls(probe).start()

    def start(self) -> ClusterWatch:
        self._last_ok = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing (before ``ray.shutdown``, which ends the GCS of an embedded Ray)."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._every_s + 1.0)

    def silent_s(self) -> float:
        """Seconds since the cluster last answered (0 while it answers)."""
        return 0.0 if not self._error else time.monotonic() - self._last_ok

    def check(self) -> None:
        """Raise :class:`ClusterLostError` once the cluster has been silent for ``lost_after_s``."""
        silent = self.silent_s()
        if silent >= self._lost_after_s:
            raise ClusterLostError(f"its head (GCS) has not answered for {silent:.0f} s ({self._error})")

    def _watch(self) -> None:
        while not self._stopped.is_set():
            started = time.monotonic()
            try:
                self._probe(self._every_s)
            except Exception as e:  # noqa: BLE001  (any failure to answer counts)
                self._error = first_line(e)
                silent = time.monotonic() - self._last_ok
                log.warning("the Ray head is not answering (%s) for %.0f s", self._error, silent)
            else:
                self._last_ok, self._error = time.monotonic(), ""
            self._stopped.wait(max(0.05, self._every_s - (time.monotonic() - started)))
