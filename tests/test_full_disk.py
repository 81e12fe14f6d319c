"""A full disk, for real: a small tmpfs mounted for the test, filled to the last byte (issue 23).

``run`` and ``report`` end with exit status 1 (an environment error) and one ``error:`` line, no
traceback; nothing is half-written (no temporary file left, every table and the manifest still
read, the previous report intact); a trial whose results could not be written is not recorded,
and once space is freed the same command finishes the job.

Mounting needs root (CAP_SYS_ADMIN) on Linux: elsewhere these tests skip and say so. A mock of
``os.write`` raising ENOSPC would not show what a real full disk does to the writes that come
before the failing one (the lock, the manifest, a rename, a directory entry).
"""

from __future__ import annotations

import copy
import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, TINY_SPEC, write_spec

pytestmark = pytest.mark.slow


class Disk:
    """A mounted tmpfs at ``path`` and a filler file that takes its free space."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._filler = path / "filler"

    def fill(self, leave: int = 0) -> None:
        """Take every free byte, then give back ``leave`` bytes (tmpfs counts whole 4 KiB pages)."""
        chunk = b"\0" * (1 << 16)
        with open(self._filler, "ab") as f:
            try:
                while True:
                    f.write(chunk)
                    f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
        if leave:
            os.truncate(self._filler, max(0, self._filler.stat().st_size - leave))

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("a real full disk needs a tmpfs of its own: mounting one needs root (CAP_SYS_ADMIN) on Linux")
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): a container without CAP_SYS_ADMIN?")
    try:
        yield Disk(where)
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)  # busy: detach it now, free it later


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The real command line (``run`` through its supervisor), in a process of its own."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RNN_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RNN_ORCH_FAULTS", None)
    env.pop("RNN_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line a command that failed on the environment ends with (exit status 1)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "No space left on device" in lines[0], lines[0]
    return lines[0]


def _files(job: Path) -> dict[str, bytes]:
    """Every file of the job folder but the lock (whose holder's pid each command rewrites)."""
    files = [p for p in sorted(job.rglob("*")) if p.is_file() and p.name != ".lock"]
    return {str(p.relative_to(job)): p.read_bytes() for p in files}


def _whole(job: Path) -> None:
    """Nothing half-written: no temporary file, and each table and the manifest read."""
    assert not [p for p in job.rglob("*.tmp")], "a temporary file was left behind"
    for table in ("trials.parquet", "evals.parquet"):
        pq.read_table(job / table)
    json.loads((job / "manifest.json").read_text())


def _specs(tmp_path: Path, disk: Disk) -> tuple[Path, Path]:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(output=str(disk.path / "results"))
    spec["sweep"]["seeds"] = [0]  # an LSTM and a GRU
    small = write_spec(tmp_path / "tiny.yaml", spec)
    spec["sweep"]["grid"]["model.cell"] = ["lstm", "gru", "rnn"]  # the same two, and one more
    return small, write_spec(tmp_path / "wide.yaml", spec)


@pytest.mark.usefixtures("isolated_cache")
def test_run_and_report_on_a_full_disk_exit_1_with_one_line_and_half_write_nothing(
        tmp_path: Path, disk: Disk) -> None:
    small, wide = _specs(tmp_path, disk)
    job = disk.path / "results" / "tiny"
    assert _cli(tmp_path, "run", "--local", str(small)).returncode == 0
    before = _files(job)
    assert "report.html" in before and pq.read_table(job / "trials.parquet").num_rows == 2

    disk.fill()
    assert str(job) in _error_line(_cli(tmp_path, "report", str(job)))
    assert _files(job) == before  # the previous report stays whole
    _error_line(_cli(tmp_path, "run", "--local", str(small)))
    assert _files(job) == before  # not even a run record
    _whole(job)


@pytest.mark.usefixtures("isolated_cache")
def test_a_disk_that_fills_during_a_sweep_stops_it_and_the_rerun_finishes_it(tmp_path: Path, disk: Disk) -> None:
    small, wide = _specs(tmp_path, disk)
    job = disk.path / "results" / "tiny"
    assert _cli(tmp_path, "run", "--local", str(small)).returncode == 0
    rows = pq.read_table(job / "trials.parquet").to_pylist()

    disk.fill(leave=32 * 1024)  # room for the lock and the run record, not for a checkpoint
    line = _error_line(_cli(tmp_path, "run", "--local", str(wide)))
    assert "rnn" not in {r["model.cell"] for r in pq.read_table(job / "trials.parquet").to_pylist()}, line
    assert pq.read_table(job / "trials.parquet").to_pylist() == rows  # the new trial is not recorded
    assert not list(job.glob("parts/*"))
    _whole(job)

    disk.free()
    proc = _cli(tmp_path, "run", "--local", str(wide))
    assert proc.returncode == 0, proc.stderr
    assert "skipping 2 finished trials" in proc.stdout
    after = pq.read_table(job / "trials.parquet").to_pylist()
    assert sorted(r["model.cell"] for r in after) == ["gru", "lstm", "rnn"]
    assert {r["status"] for r in after} == {"completed"}
    _whole(job)
