"""`run` with bad input: exit status 2, one clear line, no traceback, nothing dispatched or written."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

from conftest import TINY_SPEC, ray_env, run_cli, write_spec
from orchestrator.cli import main
from orchestrator.errors import UsageError
from orchestrator.results.lock import JobLock
from orchestrator.spec import job_location, load_job
from orchestrator.spec.location import RAY_JOB_ENV


def _spec(tmp_path: Path, **data: object) -> Path:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="bad", output=str(tmp_path / "results"))
    spec["data"].update(data)
    return write_spec(tmp_path / "bad.yaml", spec)


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "empty"),
        (b"caf\xe9 au lait " * 100, "UTF-8"),
        (b"too short", "window"),
    ],
    ids=["empty", "not-utf8", "shorter-than-a-window"],
)
@pytest.mark.usefixtures("isolated_cache")
def test_bad_corpus_file_is_refused_before_dispatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    spec_path = _spec(tmp_path, corpus=str(corpus))
    assert main(["run", str(spec_path), "--local"]) == 2
    err = capsys.readouterr().err
    assert f"{spec_path}: data" in err and expected in err and "corpus.txt" in err
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists()  # nothing written


@pytest.mark.ray
def test_bad_corpus_is_refused_before_ray_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the default backend the preflight runs before Ray starts: a bad corpus is refused and no
    embedded Ray is left behind."""
    import ray

    for key, value in ray_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"")
    spec_path = _spec(tmp_path, corpus=str(corpus))
    assert main(["run", str(spec_path)]) == 2
    err = capsys.readouterr().err
    assert f"{spec_path}: data" in err and "empty" in err and "Traceback" not in err
    assert not ray.is_initialized() and not (tmp_path / "results").exists()


def test_unusable_output_folder_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    spec_path = _spec(tmp_path)
    assert main(["run", str(spec_path), "--local", "--output", str(blocker / "results")]) == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and "Traceback" not in err


def test_a_second_run_into_the_same_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path = _spec(tmp_path)
    with JobLock(tmp_path / "results" / "bad"):
        assert main(["run", str(spec_path), "--local"]) == 2
    err = capsys.readouterr().err
    assert "another run" in err and "Traceback" not in err


def test_relative_output_under_ray_job_submit_must_be_absolute(tmp_path: Path) -> None:
    spec = load_job(write_spec(tmp_path / "rel.yaml", dict(TINY_SPEC, output="results"))).spec
    with pytest.raises(UsageError, match="ray job submit"):
        job_location(spec, None, environ={RAY_JOB_ENV: "{}"})
    assert job_location(spec, str(tmp_path / "abs"), environ={RAY_JOB_ENV: "{}"}) == str(tmp_path / "abs" / "tiny")
    assert job_location(spec, "s3://bucket/runs", environ={}) == "s3://bucket/runs/tiny"
    assert job_location(spec, None, environ={}) == str((Path.cwd() / "results" / "tiny").resolve())


def test_run_with_a_bad_spec_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(output=str(tmp_path / "results"))
    spec["model"]["hidden_size"] = 10**12
    spec["train"]["lr"] = -1
    spec_path = write_spec(tmp_path / "bad.yaml", spec)
    assert main(["run", str(spec_path)]) == 2
    err = capsys.readouterr().err
    assert f"{spec_path}: model.hidden_size" in err and f"{spec_path}: train.lr" in err
    assert not (tmp_path / "results").exists()


@pytest.mark.ray
def test_a_trial_bigger_than_this_machine_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in ray_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(output=str(tmp_path / "results"))
    spec["resources"]["cpus_per_trial"] = 512
    assert main(["run", str(write_spec(tmp_path / "big.yaml", spec))]) == 2
    err = capsys.readouterr().err
    assert "cannot fit one trial" in err and "cpus_per_trial" in err and "Traceback" not in err


@pytest.mark.ray
def test_unreachable_address_is_refused_fast_before_anything_is_written(tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path / "nowhere.yaml", dict(TINY_SPEC, name="nowhere", output=str(tmp_path / "results")))
    start = time.monotonic()
    proc = run_cli(["run", str(spec_path), "--address", "127.0.0.1:9"], ray_env(tmp_path), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - start < 30
    assert "cannot reach a Ray cluster at 127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "results").exists()  # no lock, no manifest, nothing
