"""Whether any node can ever host a trial: the placement and autoscaler forensics of the Ray backend.

A trial's workers wait while no node can place them; that wait is the autoscaler's demand. It
ends as a failure only when waiting cannot help: the autoscaler says no node type fits a trial
(v2's infeasible requests), or there is no autoscaler that can add nodes (v1's status, or a
cluster started by hand) and no node that fits has joined for ``placement_timeout_s``.
Every question goes to the GCS with a timeout (``ray.nodes()`` has none and waits on a dead head).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Optional

from orchestrator.run.connect import gcs_client

log = logging.getLogger(__name__)

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


class Placement:
    """Asks, at most every :data:`PLACEMENT_CHECK_EVERY_S`, whether any node can host a trial of
    ``cpus`` CPU and ``gpus`` GPU (see the module docstring)."""

    def __init__(self, cpus: float, gpus: float, placement_timeout_s: float) -> None:
        self._cpus, self._gpus = cpus, gpus
        self._placement_timeout_s = placement_timeout_s
        self._next_check = 0.0
        self._unfit_since: Optional[float] = None
        self._unhostable: Optional[str] = None

    def unhostable(self) -> Optional[str]:
        now = time.monotonic()
        if now < self._next_check:
            return self._unhostable
        self._next_check = now + PLACEMENT_CHECK_EVERY_S
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

    @staticmethod
    def _alive_node_sizes() -> list[tuple[float, float]]:
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
