"""``tracking.mlflow`` against a real ``mlflow server`` on loopback (SQLite behind it): a driver
killed mid-sweep and run again leaves one run per trial with each step once, and a server that
goes away mid-sweep costs one warning, not the sweep. The drivers run without Ray (``--local``)."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import TINY_SPEC, Driver, eventually, free_port, local_env, run_cli, sigkill_driver_when
from orchestrator.results import ResultsStore
from trackers import evals_by_trial, metric_history, mlflow_runs, same_series, tb_scalars

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cache")]


@contextlib.contextmanager
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """``mlflow server`` on a free loopback port, in a process group of its own (stopped, whole, after)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "mlflow-server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    try:
        if not eventually(healthy, 90, every_s=0.5):
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
        yield url, server
    finally:
        stop(server)
        log.close()


def stop(server: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _spec_file(tmp_path: Path, name: str, **tracking: Any) -> Path:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name=name, output=str(tmp_path / "results"), tracking=tracking)
    spec["train"].update(max_steps=60, eval_every=10)
    spec["resources"]["max_concurrent"] = 1
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


def test_a_driver_killed_mid_sweep_and_run_again_leaves_one_run_per_trial_and_each_step_once(tmp_path: Path) -> None:
    with mlflow_server(tmp_path) as (url, _):
        spec = _spec_file(tmp_path, "killed", tensorboard=True, mlflow=url)
        folder = tmp_path / "results" / "killed"
        env = local_env(tmp_path)

        def second_trial_running() -> bool:  # one trial committed, the next one's points on their way
            parts = list((folder / "parts").glob("*")) if (folder / "parts").is_dir() else []
            tb = folder / "tensorboard"
            return bool(parts) and tb.is_dir() and len(list(tb.iterdir())) >= 2

        sigkill_driver_when(spec, env, second_trial_running, "second trial", args=["--local"])
        done = run_cli(["run", str(spec), "--local"], env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "WARNING" not in done.stdout + done.stderr  # no tracker warned: the rerun wrote what it lacked

        want = evals_by_trial(folder)
        assert len(want) == 4 and all(len(s) == 6 for s in want.values())
        client, trials, job_run = mlflow_runs(url, "killed")  # fails on a trial with two runs
        assert set(trials) == set(want)
        assert json.loads((folder / "tracking.json").read_text())["mlflow"][url]["run_id"] == job_run.info.run_id
        for tid, series in want.items():
            # each step once, with the job folder's values
            assert same_series(metric_history(client, trials[tid]), series), tid
            assert same_series(tb_scalars(folder / "tensorboard" / tid), series), tid
            assert trials[tid].info.status == "FINISHED"


def test_a_server_that_goes_away_mid_sweep_costs_one_warning_and_the_sweep_succeeds(tmp_path: Path) -> None:
    with mlflow_server(tmp_path) as (url, server):
        spec = _spec_file(tmp_path, "gone", mlflow=url)
        driver = Driver(["run", str(spec), "--local"], local_env(tmp_path), tmp_path / "driver.log")
        driver.wait_for(lambda text: "completed: best val" in text, 180, "a finished trial")
        stop(server)
        assert driver.finish(timeout=300) == 0, driver.text()
    text = driver.text()
    warnings = [line for line in text.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "tracking: mlflow" in warnings[0] and "failed" in warnings[0], warnings
    assert len(ResultsStore(str(tmp_path / "results" / "gone")).finished_trial_ids()) == 4
