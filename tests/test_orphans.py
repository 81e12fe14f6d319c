"""A SIGKILL of the forked driver leaves no embedded Ray process behind (issue 23).

Ray ends its GCS and raylet with the driver (``PR_SET_PDEATHSIG``), but the raylet's agents and
workers lived on for about 70 s. The supervisor, a child subreaper, ends them once the driver has
ended. Linux only (``/proc``, ``PR_SET_CHILD_SUBREAPER``).
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import TINY_SPEC, eventually, ray_env, write_spec
from orchestrator.processes import children

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_CHILD_SUBREAPER")


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def _tree(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.ray
def test_a_sigkilled_drivers_embedded_ray_processes_end_with_it(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(output=str(tmp_path / "results"))
    spec["train"].update(max_steps=1_000_000, eval_every=1000)  # still training when the driver is killed
    spec["sweep"]["seeds"] = [0]
    spec["resources"]["max_concurrent"] = 1
    path = write_spec(tmp_path / "long.yaml", spec)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(path)], cwd=tmp_path,
                            env=ray_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout or ()), daemon=True)
    reader.start()
    tree: set[int] = set()
    try:
        assert eventually(lambda: "running on" in "".join(output), 180), "".join(output)
        time.sleep(5)  # the agents settled (killed at once, they had ended within seconds anyway)
        (driver,) = children(proc.pid)
        tree = _tree(driver)
        agents = [p for p in tree if b"Agent" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(agents) >= 1, tree  # ray::DashboardAgent, ray::RuntimeEnvAgent: these lived ~60 s more
        os.kill(driver, signal.SIGKILL)
        assert proc.wait(timeout=60) == 1
        reader.join(10)
        assert "killed by SIGKILL" in "".join(output)
        gone_by = time.monotonic()
        assert eventually(lambda: not [p for p in tree if _running(p)], 5), (
            [p for p in tree if _running(p)], time.monotonic() - gone_by)
    finally:
        for pid in [proc.pid, *tree]:  # ours only, by pid, should the test fail midway
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
