"""The smaller commands: sample, devices, report, clean."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from conftest import tiny_run, trial_of
from orchestrator.cli import main
from orchestrator.results import ResultsStore, trial_row
from rnn.train import Trainer

TINY = tiny_run(max_steps=10)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(Trainer(TINY, tmp_path_factory.mktemp("ckpt")).fit().best_checkpoint)


def test_sample_prints_a_continuation(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", str(checkpoint), "--prompt", "The ", "--length", "20", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The ") and len(out.rstrip("\n")) >= 4


def test_sample_refuses_a_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["sample", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "best.pt" in err and "Traceback" not in err


def test_devices_reports_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device_type"] in ("cpu", "cuda", "mps") and report["torch_version"]


def _job(tmp_path: Path) -> tuple[ResultsStore, Path]:
    job = tmp_path / "job"
    store = ResultsStore(job)
    now = datetime.now(timezone.utc)
    result = Trainer(TINY, tmp_path / "run").fit()
    for tid, status in (("aaaaaaaaaaaa", "completed"), ("bbbbbbbbbbbb", "completed"), ("cccccccccccc", "diverged")):
        trial = trial_of(tid, TINY.to_dict())
        res = result if status == "completed" else replace(result, best_val_loss=None)
        rel = store.write_checkpoint_bytes(tid, Path(result.best_checkpoint).read_bytes())
        store.commit_trial(trial_row(trial, status=status, result=res, started_at=now, finished_at=now,
                                     checkpoint=rel, error="loss became non-finite" if status != "completed" else None),
                           result.evals)
    store.compact()  # as a finished run leaves it: the three tables
    return store, job


@pytest.mark.slow
def test_report_rebuilds_from_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, job = _job(tmp_path)
    assert main(["report", str(job)]) == 0
    assert (job / "report.md").is_file() and "<svg" in (job / "report.html").read_text()
    assert main(["report", str(tmp_path)]) == 0  # a folder of job folders
    assert main(["report", str(tmp_path / "nothing-here")]) == 2


def test_clean_removes_temp_files_and_unneeded_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, job = _job(tmp_path)
    stale = job / ".trials.parquet.999999.deadbeef.tmp"
    stale.write_bytes(b"half a file")
    assert main(["clean", str(job), "--dry-run"]) == 0
    assert stale.exists() and (job / "checkpoints" / "cccccccccccc" / "best.pt").exists()
    assert main(["clean", str(job)]) == 0
    out = capsys.readouterr().out
    assert "removed 2 files" in out
    assert not stale.exists() and not (job / "checkpoints" / "cccccccccccc").exists()
    rows = {r["trial_id"]: r for r in store.read_trials().to_pylist()}
    assert rows["cccccccccccc"]["checkpoint"] is None and rows["aaaaaaaaaaaa"]["checkpoint"]
    assert main(["clean", str(job), "--keep-top", "1"]) == 0
    kept = [d.name for d in (job / "checkpoints").iterdir()]
    assert len(kept) == 1
    assert main(["clean", str(tmp_path / "nope")]) == 2


def _one_line_error(capsys: pytest.CaptureFixture[str], where: object) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    (line,) = err.splitlines()
    assert line.startswith(f"{where}: ")
    return line


def test_report_on_a_truncated_trials_table_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, job = _job(tmp_path)
    table = job / "trials.parquet"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    capsys.readouterr()  # only what the command prints counts
    assert main(["report", str(job)]) == 2
    assert "trials.parquet" in _one_line_error(capsys, job)


def test_report_with_a_manifest_that_is_not_an_object_is_one_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, job = _job(tmp_path)
    (job / "manifest.json").write_text("[1, 2, 3]")
    capsys.readouterr()
    assert main(["report", str(job)]) == 2
    assert "manifest.json is not a JSON object" in _one_line_error(capsys, job)


@pytest.mark.slow  # trains, then a report with its sampler child
def test_report_survives_odd_manifest_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, job = _job(tmp_path)
    (job / "manifest.json").write_text(json.dumps({"versions": [1], "host": "x", "devices": 3, "spec_text": 5}))
    assert main(["report", str(job)]) == 0


def _edited_checkpoint(checkpoint: Path, tmp_path: Path, **changes: object) -> Path:
    from rnn.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoint)
    state.pop("format_version")
    for key, value in changes.items():
        if value is None:
            state.pop(key)
        else:
            state[key] = value
    return save_checkpoint(tmp_path / "edited.pt", state)


def test_sample_on_a_checkpoint_without_a_tokenizer_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = _edited_checkpoint(checkpoint, tmp_path, tokenizer=None)
    assert main(["sample", str(edited), "--length", "5"]) == 2
    assert "holds no tokenizer" in _one_line_error(capsys, edited)


def test_sample_on_a_checkpoint_claiming_an_absurd_vocabulary_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edited = _edited_checkpoint(checkpoint, tmp_path, vocab_size=10**12)
    assert main(["sample", str(edited), "--length", "5"]) == 2  # refused before anything is allocated
    line = _one_line_error(capsys, edited)
    assert "claims a vocabulary of 1000000000000 ids, but its tokenizer has" in line


def test_sample_on_a_checkpoint_with_weights_of_another_shape_is_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rnn.checkpoint import load_checkpoint

    config = load_checkpoint(checkpoint)["config"]
    wider = {**config, "model": {**config["model"], "hidden_size": 48}}
    edited = _edited_checkpoint(checkpoint, tmp_path, config=wider)
    assert main(["sample", str(edited), "--length", "5"]) == 2
    assert "does not hold a model this version can rebuild" in _one_line_error(capsys, edited)


def test_sample_on_a_job_folder_takes_its_best_trials_checkpoint(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, job = _job(tmp_path)
    capsys.readouterr()
    assert main(["sample", str(job), "--length", "20", "--seed", "0"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "sampling from trial aaaaaaaaaaaa (rank 1 by best_val_loss)" in err
    assert main(["sample", str(tmp_path / "run")]) == 2  # a folder that is not a job
    assert "a directory, not a checkpoint" in capsys.readouterr().err
