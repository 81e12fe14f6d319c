"""A real head that requires a token (``RAY_AUTH_MODE=token``), on loopback.

With the token, ``ray job submit`` and ``run --address`` work; without it, or with a wrong one,
``ray job submit`` is refused and ``run`` exits 2 with one line naming the token, within seconds,
before anything is locked or written.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import BIN, REPO, TINY_SPEC, ray_env, ray_head, run_cli, write_spec

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def token_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """(GCS address, job server URL, token file): a token generated here, in the test's folder."""
    tmp = tmp_path_factory.mktemp("token-head")
    token = tmp / "auth_token"
    token.write_text(secrets.token_hex(32))
    with ray_head(tmp, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}) as (gcs, jobs, _):
        yield gcs, jobs, token


def _client_env(tmp: Path, **auth: str) -> dict[str, str]:
    """A client's environment: ``auth`` and no other token, ``RAY_AUTH_MODE`` the Makefile's
    ``disabled`` unless ``auth`` sets it ("" leaves it unset), and a HOME of its own, so no
    ``~/.ray/auth_token`` is found."""
    env = ray_env(tmp, {"HOME": str(tmp / "home")})
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    env.update(auth)
    if not env.get("RAY_AUTH_MODE"):
        env.pop("RAY_AUTH_MODE", None)
    return env


def _spec(tmp: Path, name: str) -> Path:
    spec = dict(TINY_SPEC, name=name, output=str(tmp / "results"))
    spec["sweep"] = {"grid": {"model.cell": ["lstm"]}, "seeds": [0]}
    return write_spec(tmp / f"{name}.yaml", spec)


def _submit(jobs: str, env: dict[str, str], *entrypoint: str) -> subprocess.CompletedProcess:
    """``ray job submit``, again while the head's job agent is still starting (HTTP 500 "No
    available agent"): the job server answers before its agent does."""
    deadline = time.monotonic() + 60
    while True:
        proc = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", jobs, "--", *entrypoint],
                              env=env, capture_output=True, text=True, timeout=180, cwd=REPO)
        if "No available agent" not in proc.stderr or time.monotonic() > deadline:
            return proc
        time.sleep(1)


def test_ray_job_submit_needs_the_token(token_head: tuple[str, str, Path], tmp_path: Path) -> None:
    _, jobs, token = token_head
    refused = _submit(jobs, _client_env(tmp_path), "python", "-c", "print('ran')")
    assert refused.returncode != 0 and "ran" not in refused.stdout
    assert "Authentication required" in refused.stderr or "authentication token" in refused.stderr
    done = _submit(jobs, _client_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token.read_text()),
                   "python", "-c", "print('ran')")
    assert done.returncode == 0 and "ran" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("auth,expected", [
    ({}, "requires an authentication token and none was sent (RAY_AUTH_MODE is disabled)"),
    ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, "refused the authentication token from RAY_AUTH_TOKEN"),
    ({"RAY_AUTH_MODE": "token"}, "RAY_AUTH_MODE=token but no authentication token was found"),
], ids=["no-token", "wrong-token", "token-mode-without-token"])
def test_run_without_the_right_token_is_one_line_and_exit_2(
    token_head: tuple[str, str, Path], tmp_path: Path, auth: dict[str, str], expected: str
) -> None:
    gcs, _, _ = token_head
    spec = _spec(tmp_path, "refused")
    start = time.monotonic()
    proc = run_cli(["run", str(spec), "--address", gcs], _client_env(tmp_path, **auth), timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{spec}: ") and expected in lines[-1], proc.stderr
    assert "RAY_AUTH_TOKEN" in lines[-1] and "Traceback" not in proc.stderr
    assert not any("gcs_client" in line for line in lines), proc.stderr  # Ray's own C++ log line is not shown
    assert took < 15, took  # ray.init alone would retry for 20 s
    assert not (tmp_path / "results").exists()  # nothing locked or written


def test_run_with_the_token_runs_the_trial(token_head: tuple[str, str, Path], tmp_path: Path) -> None:
    gcs, _, token = token_head
    spec = _spec(tmp_path, "allowed")
    # The token file alone is enough: a token given explicitly turns RAY_AUTH_MODE to token.
    env = _client_env(tmp_path, RAY_AUTH_MODE="", RAY_AUTH_TOKEN_PATH=str(token))
    proc = run_cli(["run", str(spec), "--address", gcs], env, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "connected to the Ray cluster" in proc.stdout + proc.stderr
    rows = pq.read_table(tmp_path / "results" / "allowed" / "trials.parquet").to_pylist()
    assert [r["status"] for r in rows] == ["completed"]
