"""The cluster watch's timing, driven by a probe we control (the real GCS case is in test_cluster.py)."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import eventually
from orchestrator.run.backend import ClusterLostError
from orchestrator.run.cluster_watch import ClusterWatch, ray_gcs_timeout_s


class Head:
    """A probe target that answers until it is told to stop answering."""

    def __init__(self) -> None:
        self.up = True
        self.calls = 0

    def probe(self, timeout_s: float) -> None:
        self.calls += 1
        if not self.up:
            raise ConnectionError("failed to connect to all addresses")


@pytest.mark.slow
def test_a_silent_head_is_lost_after_lost_after_s_not_before() -> None:
    head = Head()
    # Seconds, not tenths: a loaded machine can starve the watch's thread for a moment, and the
    # silence counts from its last answered probe, which may be a little before `down`.
    watch = ClusterWatch(head.probe, every_s=0.05, lost_after_s=1.0).start()
    try:
        time.sleep(0.2)
        watch.check()  # answering: nothing to say
        head.up = False
        down = time.monotonic()
        while time.monotonic() - down < 0.5:
            watch.check()  # silent, but not for long enough yet
            time.sleep(0.02)
        with pytest.raises(ClusterLostError) as lost:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                watch.check()
                time.sleep(0.02)
        assert time.monotonic() - down < 3.0
        message = str(lost.value)
        assert message.startswith("lost the Ray cluster: its head (GCS) has not answered for")
        assert "ConnectionError: failed to connect" in message and "run the same command again" in message
    finally:
        watch.stop()


def test_a_head_that_answers_again_is_not_lost_and_a_stopped_watch_probes_no_more() -> None:
    head = Head()
    watch = ClusterWatch(head.probe, every_s=0.05, lost_after_s=0.3).start()
    head.up = False
    assert eventually(lambda: watch.silent_s() > 0, 5)  # the watch probes from its own thread
    head.up = True  # a blip: the GCS restarted, or one probe timed out
    assert eventually(lambda: watch.silent_s() == 0, 5)
    watch.check()
    watch.stop()  # the run ended: ray.shutdown is about to end an embedded GCS
    calls = head.calls
    time.sleep(0.3)
    assert head.calls == calls
    assert not any(t.name == "cluster-watch" for t in threading.enumerate())


def test_the_loop_hears_of_a_lost_head_well_before_ray_ends_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_gcs_rpc_server_reconnect_timeout_s", raising=False)
    assert ray_gcs_timeout_s() == 60.0
    assert ClusterWatch(Head().probe)._lost_after_s == 20.0
    monkeypatch.setenv("RAY_gcs_rpc_server_reconnect_timeout_s", "16")  # a cluster tuned for quick failure
    assert ClusterWatch(Head().probe)._lost_after_s == 8.0

