"""``clean``: ranks like the report, refuses a negative N, never leaves the job folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest

from conftest import trial_of
from orchestrator.cli import main
from orchestrator.results import DamagedFolderError, ResultsStore, trial_row
from orchestrator.results.clean import clean_job
from orchestrator.results.ranking import rank_trials, ranking_metric
from rnn.config import DataConfig, RunConfig


def add_trial(store: ResultsStore, trial_id: str, status: str, level: str, loss: Optional[float],
              bpc: Optional[float]) -> None:
    config = RunConfig(data=DataConfig(level=level)).to_dict()
    rel = store.write_checkpoint_bytes(trial_id, b"weights of " + trial_id.encode())
    row: dict[str, Any] = trial_row(trial_of(trial_id, config), status=status, checkpoint=rel)
    store.commit_trial({**row, "best_val_loss": loss, "best_val_bpc": bpc})


def mixed_tokenizations(tmp_path: Path) -> tuple[ResultsStore, Path]:
    """A bpe trial with the best bits per character but the worst loss per token, two char trials."""
    job = tmp_path / "job"
    store = ResultsStore(job)
    add_trial(store, "bpe000000000", "completed", "bpe", loss=3.0, bpc=1.2)
    add_trial(store, "char00000001", "completed", "char", loss=1.0, bpc=1.5)
    add_trial(store, "char00000002", "completed", "char", loss=1.1, bpc=1.6)
    add_trial(store, "failed000000", "failed", "char", loss=None, bpc=None)
    return store, job


def kept(job: Path) -> set[str]:
    return {d.name for d in (job / "checkpoints").iterdir()}


def test_keep_top_ranks_by_bits_per_character_when_tokenization_varies(tmp_path: Path) -> None:
    store, job = mixed_tokenizations(tmp_path)
    rows = store.read_trials().to_pylist()
    metric = ranking_metric(rows)  # the report's rule, shared
    assert metric.trials_column == "best_val_bpc"
    assert [r["trial_id"] for r in rank_trials(rows, metric)] == ["bpe000000000", "char00000001", "char00000002"]
    report = clean_job(str(job), keep_top=1)
    assert kept(job) == {"bpe000000000"}
    dropped = ("char00000001", "char00000002", "failed000000")
    assert sorted(report.removed) == [f"checkpoints/{t}/best.pt" for t in dropped]
    cleared = {r["trial_id"]: r["checkpoint"] for r in store.read_trials().to_pylist()}
    assert cleared["bpe000000000"] and not any(cleared[t] for t in dropped)


def test_keep_top_ranks_by_loss_when_tokenization_is_the_same(tmp_path: Path) -> None:
    job = tmp_path / "job"
    store = ResultsStore(job)
    add_trial(store, "aaaaaaaaaaaa", "completed", "char", loss=1.2, bpc=1.0)
    add_trial(store, "bbbbbbbbbbbb", "completed", "char", loss=1.0, bpc=1.1)
    clean_job(str(job), keep_top=1)
    assert kept(job) == {"bbbbbbbbbbbb"}


def test_keep_top_removes_pruned_trials_checkpoints_and_keeps_a_paused_ones(tmp_path: Path) -> None:
    job = tmp_path / "job"
    store = ResultsStore(job)
    add_trial(store, "best00000000", "completed", "char", loss=1.0, bpc=1.0)
    add_trial(store, "pruned000000", "pruned", "char", loss=0.9, bpc=0.9)  # better at its rung: not comparable
    add_trial(store, "paused000000", "paused", "char", loss=1.1, bpc=1.1)
    report = clean_job(str(job), keep_top=1)
    assert kept(job) == {"best00000000", "paused000000"}
    assert report.removed == ["checkpoints/pruned000000/best.pt"]


def test_a_negative_keep_top_is_refused_and_removes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, job = mixed_tokenizations(tmp_path)
    assert main(["clean", str(job), "--keep-top", "-1"]) == 2
    out, err = capsys.readouterr()
    assert err == f"{job}: --keep-top should be 0 or more, the number of trials whose checkpoints to keep (got -1)\n"
    assert out == "" and len(kept(job)) == 4
    with pytest.raises(ValueError, match="keep_top"):
        clean_job(str(job), keep_top=-3)
    assert len(kept(job)) == 4


def test_a_symlinked_checkpoint_folder_is_refused_and_never_followed(tmp_path: Path) -> None:
    store, job = mixed_tokenizations(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "best.pt").write_bytes(b"somebody else's file")
    (outside / ".best.pt.999999.deadbeef.tmp").write_bytes(b"looks like a stale temp file")
    target = job / "checkpoints" / "failed000000"
    for f in target.iterdir():
        f.unlink()
    target.rmdir()
    target.symlink_to(outside, target_is_directory=True)
    with pytest.raises(DamagedFolderError, match=r"checkpoints/failed000000 is a symbolic link"):
        clean_job(str(job), keep_top=0)
    assert (outside / "best.pt").read_bytes() == b"somebody else's file"
    assert (outside / ".best.pt.999999.deadbeef.tmp").exists()  # taking the lock does not reach through it either
    assert target.is_symlink()
    assert len(kept(job)) == 4  # nothing was cleaned


@pytest.mark.slow
def test_a_crafted_trial_id_is_skipped_with_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, job = mixed_tokenizations(tmp_path)
    assert main(["report", str(job)]) == 0  # compacts the parts into trials.parquet
    capsys.readouterr()
    # commit_trial refuses such an id; a hand-edited (or hostile) trials table can still hold one.
    table = pq.read_table(job / "trials.parquet")
    rows = table.to_pylist()
    rows.append({**rows[0], "trial_id": "../../escape", "status": "failed", "checkpoint": "../../escape/best.pt"})
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), job / "trials.parquet")
    assert main(["clean", str(job)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "skipped trial '../../escape': trial_id '../../escape' cannot name a folder" in out
    assert "removed 1 files" in out and "failed000000" not in kept(job)
