"""The Ray backend: reusable trainer actors, streamed events, and every way a worker can vanish.

Workers are ``TrainerActor`` actors with the trial's CPU/GPU reservation. A worker is asked for
with :meth:`RayBackend.start_worker` and counts as ready once its ``ready()`` call answers; an
actor that no node can place yet stays *pending creation*, which is exactly the demand Ray's
autoscaler reads (v1 and v2 both count pending actors' resource shapes), and killing it
withdraws that demand. No ``request_resources`` call is needed: that one sets a floor that
outlives the sweep unless it is reset, and a pending actor cannot.

What counts as a lost worker (:class:`NoticeKind.LOST`), retried by the dispatcher:
``ActorDiedError`` / ``RayActorError`` / ``ActorUnavailableError`` (the actor or its process
died), ``WorkerCrashedError``, ``LocalRayletDiedError``, ``NodeDiedError``, ``ObjectLostError``
and its subclasses (``ObjectFetchTimedOutError``, ``OwnerDiedError``, ``ObjectFreedError``,
``ObjectReconstructionFailedError``, ``ReferenceCountingAssertionError``), ``ActorUnschedulableError``,
``TaskCancelledError``, ``RaySystemError``, a ``GetTimeoutError`` on an event that is ready but
cannot be fetched, and any other ``RayError``. ``OutOfMemoryError`` (Ray's memory monitor killed
the worker) is lost with ``oom`` set, and ``RuntimeEnvSetupError`` with ``setup_failed`` set:
the dispatcher records those instead of retrying them.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Optional

from orchestrator.run.actor import TrainerActor
from orchestrator.run.backend import Assignment, ClusterLostError, Notice, NoticeKind, first_line
from orchestrator.run.cluster_watch import ClusterWatch
from orchestrator.run.connect import cluster_address, connect, probe_address
from orchestrator.run.placement import Placement
from orchestrator.spec import ResourcesSpec, allowed_concurrency

log = logging.getLogger(__name__)

#: Longest wait for the value of an event Ray says is ready (a checkpoint crossing the network).
GET_TIMEOUT_S = 120.0


def _setup_cause(exc: BaseException) -> str:
    """One line for a runtime-env failure: its message opens with boilerplate and ends with the
    agent's traceback, whose last line is the cause (``ValueError: Could not find Conda ...``)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    cause = lines[-1] if lines else "no message"
    if len(cause) > 300:
        cause = cause[:297] + "..."
    return f"RuntimeEnvSetupError: the worker's runtime env could not be set up: {cause}"


class RayBackend:
    """Trainer actors on a Ray cluster: the one at ``address``, ``RAY_ADDRESS``'s, or an embedded one.

    Nothing happens until :meth:`open`, which connects (an address is probed first, so one that
    does not answer is a ``UsageError`` within seconds) and watches the cluster; :meth:`shutdown`
    stops watching and stops the Ray it started or joined, unless the cluster was lost (then
    ``ray.shutdown()`` would wait on the dead head: the process exit cleans up). A process
    already connected to Ray (``ray.init`` by the caller) is used as it is and left running.

    Args:
        address: the cluster to join (None: ``RAY_ADDRESS``, else an embedded local Ray).
        data_dir: corpus directory on the workers' nodes (default: ``RNN_DATA_DIR``).
        elastic: the cluster may grow: ask for workers beyond what fits now and let them wait.
            Default: True when joining a running cluster, False for an embedded Ray started
            here (its size is fixed).
        actor_options: extra ``.options()`` for the actors (e.g. a ``runtime_env``).
    """

    def __init__(
        self,
        address: Optional[str] = None,
        *,
        data_dir: Optional[str] = None,
        elastic: Optional[bool] = None,
        actor_options: Optional[dict[str, Any]] = None,
    ) -> None:
        self._address = address
        self._data_dir = data_dir if data_dir is not None else os.environ.get("RNN_DATA_DIR")
        self._elastic = elastic
        self._actor_options = actor_options or {}
        self._ray: Any = None
        self._resources: Optional[ResourcesSpec] = None
        self._num_threads = 1
        self._cls: Any = None
        self._watch: Optional[ClusterWatch] = None
        self._placement: Optional[Placement] = None
        self._connected_here = False  # this backend called ray.init: shutdown() undoes it
        self._session_dir: Optional[str] = None  # an embedded Ray's session folder, removed after it stops
        self._lost = False
        self._next_id = 0
        self._actors: dict[int, Any] = {}
        self._starting: dict[Any, int] = {}  # ready() ref -> worker
        self._streams: dict[Any, int] = {}  # ObjectRefGenerator -> worker
        self._capacity: Optional[int] = None

    # --- lifecycle --------------------------------------------------------------------------

    def open(self, resources: ResourcesSpec) -> None:
        """Connect and get ready to start workers of ``resources``' reservation (once; again is a no-op)."""
        if self._cls is not None:
            return
        import ray

        started_here = False
        if not ray.is_initialized():
            target = cluster_address(self._address)
            if target is not None:
                probe_address(target)
            started_here = connect(self._address)
            self._connected_here = True
            if started_here:  # its session folder (/tmp/ray/session_*) goes when it stops
                self._session_dir = ray._private.worker._global_node.get_session_dir_path()
        self._ray = ray
        if self._elastic is None:
            self._elastic = not started_here
        self._resources = resources
        self._num_threads = max(1, int(resources.cpus_per_trial))
        self._placement = Placement(resources.cpus_per_trial, resources.gpus_per_trial, resources.placement_timeout_s)
        self._watch = ClusterWatch.for_connected_ray()
        self._cls = ray.remote(TrainerActor).options(
            num_cpus=resources.cpus_per_trial,
            num_gpus=resources.gpus_per_trial,
            max_restarts=0,
            max_task_retries=0,
            **self._actor_options,
        )

    def shutdown(self) -> None:
        """Stop watching the cluster, then stop the Ray this backend connected to (see the class docstring)."""
        if self._watch is not None:
            self._watch.stop()  # before the shutdown ends an embedded Ray's GCS
        if self._connected_here and not self._lost:
            self._ray.shutdown()
            if self._session_dir is not None:  # logs included: a trial's error is in its row already
                shutil.rmtree(self._session_dir, ignore_errors=True)
        self._connected_here = False
        self._session_dir = None
        self._cls = None

    # --- the protocol ---------------------------------------------------------------------

    def capacity(self) -> Optional[int]:
        if self._elastic:
            return None
        if self._capacity is None:  # an embedded Ray does not grow: ask once
            assert self._resources is not None, "open() first"
            total = self._ray.cluster_resources()
            self._capacity = allowed_concurrency(self._resources, total.get("CPU", 0), total.get("GPU", 0))
        return self._capacity

    def start_worker(self) -> int:
        worker, self._next_id = self._next_id, self._next_id + 1
        actor = self._cls.remote(self._num_threads, self._data_dir)
        self._actors[worker] = actor
        self._starting[actor.ready.remote()] = worker
        return worker

    def launch(self, worker: int, a: Assignment) -> None:
        actor = self._actors[worker]
        # The previous trial's stream on this worker has ended (its last event was taken).
        for gen in [g for g, w in self._streams.items() if w == worker]:
            del self._streams[gen]
        if a.throughput_config is not None:
            gen = actor.throughput.remote(a.trial_id, a.run_config, a.throughput_config, a.attempt, a.fault)
        else:
            # Backpressure 1: the worker goes on only once the driver has taken its last event,
            # so a checkpoint it yielded has reached the driver before the worker can die after it.
            run = actor.run.options(_generator_backpressure_num_objects=1)
            gen = run.remote(a.trial_id, a.run_config, a.attempt, a.resume, a.fault, a.pause_at)
        self._streams[gen] = worker

    def poll(self, timeout_s: float) -> list[Notice]:
        ray = self._ray
        refs = [*self._starting, *self._streams]
        if not refs:
            time.sleep(timeout_s)
            return []
        try:
            ready, _ = ray.wait(refs, num_returns=1, timeout=timeout_s)
            if ready:  # and whatever else is ready right now
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        except ray.exceptions.RayError as e:  # the cluster may be going: check() decides
            log.warning("ray.wait failed (%s)", first_line(e))
            return []
        except OSError as e:  # the pipe to this node's raylet broke: the node is gone with the head
            self._lost = True
            raise ClusterLostError(f"the connection to this machine's Ray node broke ({first_line(e)})") from e
        notices = []
        for ref in ready:
            if ref in self._starting:
                notices.append(self._started(ref))
            elif ref in self._streams:
                notices.append(self._next_event(ref))
        return notices

    def kill(self, worker: int) -> None:
        actor = self._actors.pop(worker, None)
        for table in (self._starting, self._streams):
            for key in [k for k, w in table.items() if w == worker]:
                del table[key]
        if actor is not None:
            try:
                self._ray.kill(actor, no_restart=True)
            except Exception as e:  # noqa: BLE001  (already dead, or the cluster is going)
                log.debug("ray.kill of worker %d: %s", worker, e)

    def unhostable(self) -> Optional[str]:
        return self._placement.unhostable() if self._placement is not None else None

    def check(self) -> None:
        if self._watch is not None:
            try:
                self._watch.check()
            except ClusterLostError:
                self._lost = True
                raise

    def close(self) -> None:
        for worker in list(self._actors):
            self.kill(worker)

    # --- pieces ---------------------------------------------------------------------------

    def _started(self, ref: Any) -> Notice:
        ray = self._ray
        worker = self._starting.pop(ref)
        try:
            host = ray.get(ref, timeout=GET_TIMEOUT_S)
        except ray.exceptions.RuntimeEnvSetupError as e:
            return Notice(NoticeKind.START_FAILED, worker, reason=_setup_cause(e), setup_failed=True)
        except ray.exceptions.RayError as e:
            # An error in the actor's constructor will not go away on another try.
            creation = "creation task" in str(e)
            return Notice(NoticeKind.START_FAILED, worker, reason=first_line(e), setup_failed=creation)
        return Notice(NoticeKind.READY, worker, reason=str(host))

    def _next_event(self, gen: Any) -> Notice:
        ray = self._ray
        worker = self._streams[gen]
        try:
            event = ray.get(next(gen), timeout=GET_TIMEOUT_S)
        except StopIteration:
            del self._streams[gen]
            return Notice(NoticeKind.END, worker)
        except ray.exceptions.OutOfMemoryError as e:
            del self._streams[gen]
            return Notice(NoticeKind.LOST, worker, oom=True,
                          reason=f"OutOfMemoryError: the worker was killed by Ray's memory monitor: {e}")
        except ray.exceptions.RuntimeEnvSetupError as e:
            del self._streams[gen]
            return Notice(NoticeKind.LOST, worker, setup_failed=True, reason=_setup_cause(e))
        except ray.exceptions.GetTimeoutError:
            del self._streams[gen]
            return Notice(NoticeKind.LOST, worker,
                          reason=f"GetTimeoutError: an event could not be fetched within {GET_TIMEOUT_S:g} s")
        except ray.exceptions.RayError as e:
            del self._streams[gen]
            return Notice(NoticeKind.LOST, worker, reason=first_line(e))
        return Notice(NoticeKind.EVENT, worker, event=event)

