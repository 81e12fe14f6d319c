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

import json
import logging
import time
from typing import Any, Optional

from orchestrator.run.actor import TrainerActor
from orchestrator.run.backend import Assignment, ClusterLostError, Notice, NoticeKind, first_line
from orchestrator.run.cluster_watch import ClusterWatch
from orchestrator.run.connect import gcs_client
from orchestrator.spec import ResourcesSpec, allowed_concurrency

log = logging.getLogger(__name__)

#: Longest wait for the value of an event Ray says is ready (a checkpoint crossing the network).
GET_TIMEOUT_S = 120.0
#: The longest one question to the GCS (nodes, autoscaler state) may take.
GCS_TIMEOUT_S = 5.0
#: How often the nodes are asked whether any can host a trial.
PLACEMENT_CHECK_EVERY_S = 10.0
_EPS = 1e-9
_AUTOSCALER_V1_KEY = b"__autoscaling_status"


def _v1_can_launch(status: dict[str, Any]) -> bool:
    """Whether a v1 autoscaler status comes from one that can add nodes.

    The head always runs the v1 monitor. On a cluster started by hand (``ray start`` on each
    node, or ``ray.cluster_utils.Cluster``) it has no autoscaling config and uses Ray's read-only
    provider, which gives every node an anonymous type ``node_<node id>`` and never launches
    one. A real autoscaler's node types are the names in its config.
    """
    report = status.get("autoscaler_report") or {}
    mapping = report.get("node_type_mapping") or {}
    if not mapping:
        return any(not str(t).startswith("node_") for t in (report.get("active_nodes") or {}))
    return any(node_type != f"node_{node_id}" for node_id, node_type in mapping.items())


def _setup_cause(exc: BaseException) -> str:
    """One line for a runtime-env failure: its message opens with boilerplate and ends with the
    agent's traceback, whose last line is the cause (``ValueError: Could not find Conda ...``)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    cause = lines[-1] if lines else "no message"
    if len(cause) > 300:
        cause = cause[:297] + "..."
    return f"RuntimeEnvSetupError: the worker's runtime env could not be set up: {cause}"


class RayBackend:
    """Trainer actors on the connected Ray cluster.

    Args:
        resources: the spec's ``resources`` (each worker's reservation, ``max_concurrent``).
        num_threads: torch threads in each worker.
        data_dir: corpus directory on the workers' nodes.
        elastic: the cluster may grow (an existing cluster): ask for workers beyond what fits
            now and let them wait. False on an embedded local Ray, whose size is fixed.
        placement_timeout_s: with no autoscaler, how long the cluster may go without any node
            that could host a trial before :meth:`unhostable` says so.
        watch: the probe of the cluster itself that :meth:`check` consults (None: never lost).
        actor_options: extra ``.options()`` for the actors (e.g. a ``runtime_env``).
    """

    def __init__(
        self,
        resources: ResourcesSpec,
        *,
        num_threads: int,
        data_dir: Optional[str] = None,
        elastic: bool = False,
        placement_timeout_s: float = 600.0,
        watch: Optional[ClusterWatch] = None,
        actor_options: Optional[dict[str, Any]] = None,
    ) -> None:
        import ray

        self._ray = ray
        self._resources = resources
        self._cpus, self._gpus = resources.cpus_per_trial, resources.gpus_per_trial
        self._num_threads, self._data_dir = num_threads, data_dir
        self._elastic = elastic
        self._placement_timeout_s = placement_timeout_s
        self._watch = watch
        self._cls = ray.remote(TrainerActor).options(
            num_cpus=self._cpus,
            num_gpus=self._gpus,
            max_restarts=0,
            max_task_retries=0,
            **(actor_options or {}),
        )
        self._next_id = 0
        self._actors: dict[int, Any] = {}
        self._starting: dict[Any, int] = {}  # ready() ref -> worker
        self._streams: dict[Any, int] = {}  # ObjectRefGenerator -> worker
        self._capacity: Optional[int] = None
        self._next_placement_check = 0.0
        self._unfit_since: Optional[float] = None
        self._unhostable: Optional[str] = None

    # --- the protocol ---------------------------------------------------------------------

    def capacity(self) -> Optional[int]:
        if self._elastic:
            return None
        if self._capacity is None:  # an embedded Ray does not grow: ask once
            total = self._ray.cluster_resources()
            self._capacity = allowed_concurrency(self._resources, total.get("CPU", 0), total.get("GPU", 0))
        return self._capacity

    def start_worker(self) -> int:
        worker, self._next_id = self._next_id, self._next_id + 1
        actor = self._cls.remote(max(1, int(self._num_threads)), self._data_dir)
        self._actors[worker] = actor
        self._starting[actor.ready.remote()] = worker
        return worker

    def launch(self, worker: int, a: Assignment) -> None:
        actor = self._actors[worker]
        # The previous trial's stream on this worker has ended (its last event was taken).
        for gen in [g for g, w in self._streams.items() if w == worker]:
            del self._streams[gen]
        if a.throughput:
            gen = actor.throughput.remote(a.trial_id, a.config, a.attempt, a.fault)
        else:
            # Backpressure 1: the worker goes on only once the driver has taken its last event,
            # so a checkpoint it yielded has reached the driver before the worker can die after it.
            run = actor.run.options(_generator_backpressure_num_objects=1)
            gen = run.remote(a.trial_id, a.config, a.attempt, a.resume, a.fault, a.pause_at)
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
        now = time.monotonic()
        if now < self._next_placement_check:
            return self._unhostable
        self._next_placement_check = now + PLACEMENT_CHECK_EVERY_S
        try:
            sizes = self._alive_node_sizes()
        except Exception as e:  # noqa: BLE001  (the cluster may be going: check() decides)
            log.debug("listing the nodes failed: %s", e)
            return None
        if any(cpu + _EPS >= self._cpus and gpu + _EPS >= self._gpus for cpu, gpu in sizes):
            self._unfit_since = self._unhostable = None
            return None
        largest = max(sizes, default=(0.0, 0.0))
        need = (f"a trial needs {self._cpus:g} CPU and {self._gpus:g} GPU, the largest node has "
                f"{largest[0]:g} CPU and {largest[1]:g} GPU")
        autoscaler = self._autoscaler_state()
        if autoscaler == "infeasible":
            self._unhostable = f"no node type of the cluster's autoscaler can host a trial: {need}"
        elif autoscaler == "none":
            self._unfit_since = self._unfit_since or now
            if now - self._unfit_since >= self._placement_timeout_s:
                self._unhostable = (
                    f"no node of the cluster can host a trial and no autoscaler can add one: {need} "
                    f"(waited {self._placement_timeout_s:g} s for a node to join)"
                )
        return self._unhostable

    def check(self) -> None:
        if self._watch is not None:
            self._watch.check()

    def close(self) -> None:
        for worker in list(self._actors):
            self.kill(worker)

    # --- pieces ---------------------------------------------------------------------------

    def _alive_node_sizes(self) -> list[tuple[float, float]]:
        """(CPU, GPU) of each live node, asked of the GCS with a timeout (``ray.nodes()`` has none)."""
        from ray.core.generated.gcs_pb2 import GcsNodeInfo

        infos = gcs_client().get_all_node_info(timeout=GCS_TIMEOUT_S, state_filter=GcsNodeInfo.GcsNodeState.ALIVE)
        return [(float(i.resources_total.get("CPU", 0)), float(i.resources_total.get("GPU", 0)))
                for i in infos.values()]

    def _autoscaler_state(self) -> str:
        """``infeasible`` (the autoscaler says no node type fits a trial), ``present`` or ``none``."""
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        try:
            gcs = gcs_client()
            reply = GetClusterStatusReply()
            reply.ParseFromString(gcs.get_cluster_status(timeout_s=GCS_TIMEOUT_S))
            state = reply.autoscaling_state
            if state.autoscaler_state_version > 0:  # the v2 autoscaler reports here
                for request in state.infeasible_resource_requests:
                    bundle = dict(request.resources_bundle)
                    if abs(bundle.get("CPU", 0) - self._cpus) < _EPS and abs(bundle.get("GPU", 0) - self._gpus) < _EPS:
                        return "infeasible"
                return "present"
            status = gcs.internal_kv_get(_AUTOSCALER_V1_KEY, None, timeout=GCS_TIMEOUT_S)
            if status and _v1_can_launch(json.loads(status)):
                return "present"  # the v1 autoscaler writes its status here
        except Exception as e:  # noqa: BLE001  (treated as no autoscaler: the wait is bounded)
            log.debug("autoscaler state unavailable: %s", e)
        return "none"

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

