"""A hung worker on real local Ray: SIGSTOP the process training a trial (a wedged GPU, a
deadlock); with a short ``stall_timeout_s`` the driver names the silent trial, kills the worker,
retries the trial from its checkpoint and the sweep completes."""

from __future__ import annotations

import copy
import os
import re
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import TINY_SPEC, Driver, ray_env, write_spec

pytestmark = pytest.mark.ray  # a real Ray driver in a subprocess


def test_a_stopped_worker_is_detected_killed_and_its_trial_retried(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="stall", output=str(tmp_path / "results"))
    spec["sweep"] = {"grid": {"model.cell": ["lstm"]}, "seeds": [0, 1]}
    spec["train"].update(max_steps=300, eval_every=10)
    spec["resources"].update(max_concurrent=2, max_retries=1, stall_timeout_s=6)
    spec_path = write_spec(tmp_path / "stall.yaml", spec)
    driver = Driver(["run", str(spec_path)], ray_env(tmp_path), tmp_path / "stall.log")
    stopped = None
    try:
        text = driver.wait_for(lambda t: re.search(r"\] step 20:", t) is not None, 180, "a trial's second evaluation")
        m = re.search(r"\[(\S+ \S+)[^\]]*\] running on \S+ \(pid (\d+),", text)
        assert m, text
        tag, stopped = m.group(1), int(m.group(2))
        os.kill(stopped, signal.SIGSTOP)  # our own run's worker: frozen, not dead
        code = driver.finish(timeout=240)
    finally:
        if driver.proc.poll() is None:
            driver.finish(timeout=1)
        if stopped is not None:  # the driver SIGKILLed it already; make sure nothing stays frozen
            try:
                os.kill(stopped, signal.SIGCONT)
            except ProcessLookupError:
                pass
    out = driver.text()
    assert code == 0, out
    assert f"[{tag}" in out and "silent for" in out
    assert "stalled: no event for" in out and "retrying (attempt 2) from checkpoint" in out
    rows = pq.read_table(tmp_path / "results" / "stall" / "trials.parquet").to_pylist()
    assert len(rows) == 2 and {r["status"] for r in rows} == {"completed"}
    assert sorted(r["attempts"] for r in rows) == [1, 2]
    assert all(r["steps"] == 300 for r in rows)
