"""A real Ray head (`ray start --head` on loopback) and a spec submitted with `ray job submit`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, TINY_SPEC, ray_env, write_spec

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A head node in the foreground (`--block`) in its own session, so teardown stops exactly it."""
    tmp = tmp_path_factory.mktemp("head")
    port, dash = _free_port(), _free_port()
    env = ray_env(tmp, {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
        env=env, stdout=open(tmp / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline or head.poll() is not None:
                    pytest.fail(f"the Ray head did not come up: {(tmp / 'head.log').read_text()[-2000:]}")
                time.sleep(1)
        yield address, env
    finally:
        # `ray start --block` stops the head's processes on SIGTERM; it may linger over its own
        # shutdown, so the group we own gets SIGKILL after a short grace.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def test_ray_job_submit_to_a_head_writes_results(ray_head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, env = ray_head
    spec = dict(TINY_SPEC, name="submitted")
    spec_path = write_spec(tmp_path / "submitted.yaml", spec)
    out = tmp_path / "results"
    submit = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", address, "--no-wait", "--working-dir", str(REPO),
         "--", "python", "-m", "orchestrator", "run", str(spec_path), "--output", str(out)],
        env=env, capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    job_id = next(w.strip("'") for w in submit.stdout.split() if w.strip("'").startswith("raysubmit_"))

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + 240
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs
    assert "connected to the Ray cluster" in logs  # joined the head, did not start its own Ray
    assert "progress: 4/4 done, 0 running, 0 failed" in logs
    job = out / "submitted"
    assert f"results: {job}" in logs
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert len(pq.read_table(job / "evals.parquet")) == 8
    assert all((job / r["checkpoint"]).is_file() for r in rows)
    assert "<svg" in (job / "report.html").read_text(encoding="utf-8")
