"""The smaller commands: sample, devices, report, clean."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.cli import main
from orchestrator.results import ResultsStore, trial_row
from rnn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnn.train import Trainer

TINY = RunConfig(
    data=DataConfig(seq_len=16),
    model=ModelConfig(embedding_dim=16, hidden_size=32, num_layers=1, dropout=0.0),
    train=TrainConfig(batch_size=8, max_steps=10, eval_every=10, scheduler="constant"),
)


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
        trial = SimpleNamespace(trial_id=tid, config=TINY.to_dict())
        res = result if status == "completed" else replace(result, best_val_loss=None)
        rel = store.write_checkpoint_bytes(tid, Path(result.best_checkpoint).read_bytes())
        store.commit_trial(trial_row(trial, status=status, result=res, started_at=now, finished_at=now,
                                     checkpoint=rel, error="loss became non-finite" if status != "completed" else None),
                           result.evals)
    return store, job


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
