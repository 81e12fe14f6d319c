"""Connecting to Ray: join a cluster or start an embedded one, check an address first, signals.

``--address`` wins; otherwise ``RAY_ADDRESS`` (set inside ``ray job submit``) joins that
cluster; otherwise a single-node Ray starts in this process, bound to loopback. An address that
does not answer is a :class:`UsageError` within about :data:`PROBE_TIMEOUT_S` seconds, found
before anything is locked or written (``ray.init`` itself would retry for minutes); so is a
cluster that requires an authentication token this process does not have, or has wrong
(``ray.init`` would retry for 20 s and then say only that it could not connect).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Optional

from orchestrator.errors import UsageError

log = logging.getLogger(__name__)

#: How long an address may take to accept a TCP connection before it counts as unreachable.
PROBE_TIMEOUT_S = 15.0
#: Where signals are forwarded as themselves (no real-time signals): the same signal again within
#: this many seconds is one signal delivered twice (see :class:`SignalCounts`).
REPEAT_WINDOW_S = 1.0


def cluster_address(address: Optional[str]) -> Optional[str]:
    """The address ``run`` joins, or None for an embedded local Ray."""
    chosen = address or os.environ.get("RAY_ADDRESS") or None
    return None if chosen in (None, "local") else chosen


def probe_address(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`UsageError` unless something accepts TCP connections at ``address`` and, for a
    GCS address, the cluster accepts this process's authentication token (:func:`check_token`)."""
    where = "--address" if address != os.environ.get("RAY_ADDRESS") else "RAY_ADDRESS"
    use_given_token()
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
                pass
        except OSError as e:
            last = e
            if isinstance(e, ConnectionRefusedError):
                break  # nothing listens there: no point in waiting
            time.sleep(0.5)
            continue
        if not address.startswith("ray://"):  # a Ray Client server has no GCS to ask
            check_token(f"{host}:{port}", where, address)
        return
    why = last.strerror if last is not None and last.strerror else (str(last) if last else "no answer")
    raise UsageError(
        f"{where} {address!r}: cannot reach a Ray cluster at {host}:{port} ({why}); check the address and "
        "that the head is running (`ray status` on it)"
    )


def token_source(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
    """Where Ray takes this process's authentication token from, in Ray's own order of precedence
    (``RAY_AUTH_TOKEN``, then the file at ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token``), or
    None when there is none. A ``RAY_AUTH_TOKEN_PATH`` that cannot be read, or is empty, is a
    :class:`UsageError`: Ray would abort the process on it."""
    env = os.environ if environ is None else environ
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return "RAY_AUTH_TOKEN"
    path = env.get("RAY_AUTH_TOKEN_PATH", "")
    if path:
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"RAY_AUTH_TOKEN_PATH {path!r}: cannot read the token file ({e.__class__.__name__}: "
                             f"{getattr(e, 'strerror', None) or e})") from e
        if not text.strip():
            raise UsageError(f"RAY_AUTH_TOKEN_PATH {path!r}: the token file is empty")
        return f"RAY_AUTH_TOKEN_PATH ({path})"
    default = Path("~/.ray/auth_token").expanduser()
    return str(default) if default.is_file() else None


def use_given_token(environ: Optional[MutableMapping[str, str]] = None) -> None:
    """A token given explicitly (``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) is used: with
    ``RAY_AUTH_MODE`` unset, Ray's client would not send it. An explicit ``RAY_AUTH_MODE`` is
    left as it is; ``token`` without any token is a :class:`UsageError` (Ray would abort)."""
    env = os.environ if environ is None else environ
    source = token_source(env)
    explicit = env.get("RAY_AUTH_TOKEN", "").strip() or env.get("RAY_AUTH_TOKEN_PATH", "")
    mode = env.get("RAY_AUTH_MODE", "")
    if not mode and explicit:
        env["RAY_AUTH_MODE"] = "token"
        if environ is None and "ray._raylet" in sys.modules:  # Ray caches its config: read it again
            from ray._raylet import Config  # type: ignore[attr-defined]

            Config.initialize("")
    elif mode == "token" and source is None:
        raise UsageError("RAY_AUTH_MODE=token but no authentication token was found: set RAY_AUTH_TOKEN to the "
                         "cluster's token (`ray get-auth-token` on its head), or RAY_AUTH_TOKEN_PATH to a file "
                         "holding it, or put it in ~/.ray/auth_token")


def check_token(gcs_address: str, where: str, address: str) -> None:
    """Raise :class:`UsageError` when the cluster at ``gcs_address`` requires an authentication token
    and refuses this process's (none, or a wrong one): asked of its GCS in well under a second,
    where ``ray.init`` would retry for 20 s and then say only that it could not connect."""
    from ray._raylet import GcsClient  # type: ignore[attr-defined]
    from ray.exceptions import AuthenticationError

    try:
        with _native_stderr_without("gcs_client.cc"):  # Ray's C++ client logs the refusal to fd 2 itself
            GcsClient(address=gcs_address)
    except AuthenticationError as e:
        mode = os.environ.get("RAY_AUTH_MODE", "") or "unset"
        source = token_source()
        if mode != "token":
            raise UsageError(
                f"{where} {address!r}: the Ray cluster requires an authentication token and none was sent "
                f"(RAY_AUTH_MODE is {mode}): set RAY_AUTH_TOKEN to its token (`ray get-auth-token` on the head) "
                "or RAY_AUTH_TOKEN_PATH to a file holding it"
                + (", and RAY_AUTH_MODE=token" if mode == "disabled" else "")
            ) from e
        raise UsageError(
            f"{where} {address!r}: the Ray cluster refused the authentication token from {source}: it is not this "
            "cluster's; get the right one with `ray get-auth-token` on the head"
        ) from e
    except Exception as e:  # noqa: BLE001  (anything else is for ray.init to report, with its retries)
        log.debug("authentication probe of %s: %s", gcs_address, e)


@contextlib.contextmanager
def _native_stderr_without(marker: str) -> Iterator[None]:
    """While the block runs, file descriptor 2 goes to a temporary file; afterwards what was written
    there is written back to it, except the lines holding ``marker``. Ray's C++ code logs straight
    to the descriptor, past Python's logging; another thread's output is kept, only delayed."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to redirect
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if marker.encode() not in line]
            if kept:
                os.write(2, b"".join(kept))


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


class SignalCounts:
    """Which SIGINTs and SIGTERMs are new: one Ctrl-C, or one ``ray job stop``, reaches the driver
    twice, directly and as the supervisor's forwarded copy (:mod:`orchestrator.supervise`).

    Where the copy comes as a signal of its own, each signal is paired with its copy: the n-th
    event is the n-th of either kind, however late the other arrives. Elsewhere the same signal
    again within :data:`REPEAT_WINDOW_S` counts once. One instance serves a whole run (its sweep's
    handlers, then its report's), so a copy that arrives after the sweep stopped is not a second
    signal to the report.
    """

    def __init__(self) -> None:
        self._direct: dict[int, int] = {}
        self._copies: dict[int, int] = {}
        self._acted: dict[int, int] = {}
        self._last: dict[int, float] = {}

    def arrived(self, signum: int) -> Optional[int]:
        """The signal that ``signum`` (a signal or its forwarded copy) stands for, when it is a new
        event; None when it is the other half of one already counted."""
        from orchestrator.supervise import FORWARDED_AS, ORIGINAL

        if not FORWARDED_AS:
            now = time.monotonic()
            repeat = now - self._last.get(signum, -math.inf) < REPEAT_WINDOW_S
            self._last[signum] = now
            return None if repeat else signum
        sig = ORIGINAL.get(signum, signum)
        seen = self._copies if signum in ORIGINAL else self._direct
        seen[sig] = seen.get(sig, 0) + 1
        events = max(self._direct.get(sig, 0), self._copies.get(sig, 0))
        if events <= self._acted.get(sig, 0):
            return None
        self._acted[sig] = events
        return sig


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event,
                    doing: str = "stopping running trials, keeping what finished",
                    counts: Optional[SignalCounts] = None) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` (a second one raises KeyboardInterrupt); ``doing`` says
    what the first one does, in the warning logged. ``counts`` tells a signal from its forwarded
    copy (:class:`SignalCounts`; pass one instance to each block of the same run). Installed
    *after* ``ray.init``, which puts in a handler of its own that aborts the process.
    """
    from orchestrator.supervise import FORWARDED_AS

    counts = counts if counts is not None else SignalCounts()

    def on_signal(signum: int, frame: object) -> None:
        sig = counts.arrived(signum)
        if sig is None:
            return
        if stop.is_set():
            raise KeyboardInterrupt
        log.warning("%s received: %s (again to force)", signal.Signals(sig).name, doing)
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return
    handled: list[int] = [signal.SIGINT, signal.SIGTERM]
    handled += [FORWARDED_AS[s] for s in handled if s in FORWARDED_AS]
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
