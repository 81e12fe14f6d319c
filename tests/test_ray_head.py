"""A real Ray head (`ray start --head` on loopback) and a spec submitted with `ray job submit`."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import BIN, REPO, TINY_SPEC, ray_head, write_spec

pytestmark = pytest.mark.ray

@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    with ray_head(tmp_path_factory.mktemp("head")) as (_, address, env):
        yield address, env


def test_ray_job_submit_to_a_head_writes_results(head: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    address, env = head
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
