"""``repair`` rebuilds from real checkpoints what a damaged table lost, and only that (issue 23).

A job of two tiny trials is trained for real (in-process backend), then its tables are damaged:
a lost ``evals.parquet`` comes back from the checkpoints' evaluations exactly; a lost
``trials.parquet`` gives back the row of a trial whose best checkpoint ends its step budget,
while a trial whose best checkpoint is from mid-run is said lost and runs again from it.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import TINY_SPEC, write_spec
from orchestrator.cli import main
from orchestrator.results import ResultsStore
from orchestrator.run import LocalBackend, run_job
from orchestrator.spec import load_job

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cache")]

#: Columns a checkpoint holds as the row held them (times differ: the row's run on past the checkpoint).
KEPT = ("trial_id", "status", "best_val_loss", "best_val_bpc", "best_val_accuracy", "best_step", "steps", "params",
        "checkpoint", "corpus_sha256", "vocab_size", "config_json")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _trained(tmp_path: Path) -> tuple[Path, Path]:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(output=str(tmp_path / "results"))
    spec["sweep"]["seeds"] = [0]  # an LSTM and a GRU, 20 steps each, evaluated at 10 and 20
    path = write_spec(tmp_path / "tiny.yaml", spec)
    outcome = run_job(load_job(path), backend=LocalBackend(), live_report_s=0)
    assert outcome.exit_code == 0
    return path, Path(outcome.job_dir)


def _by_trial(table_path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in pq.read_table(table_path).to_pylist():
        out.setdefault(r["trial_id"], []).append(r)
    return out


def test_lost_evaluations_come_back_from_the_checkpoints_exactly(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, job = _trained(tmp_path)
    evals = _by_trial(job / "evals.parquet")
    rows = _by_trial(job / "trials.parquet")
    assert {r["best_step"] for (r,) in rows.values()} == {20}  # each was best at its last evaluation
    _truncate(job / "evals.parquet")
    assert main(["repair", str(job)]) == 0
    out = capsys.readouterr().out
    for tid in evals:
        assert (f"rebuilt trial {tid}'s evaluations from checkpoints/{tid}/best.pt: 2 evaluation(s), steps 10-20, "
                "all of them") in out
    assert "lost:" not in out
    assert _by_trial(job / "evals.parquet") == evals  # every value, as it was
    assert _by_trial(job / "trials.parquet") == rows  # the rows, untouched
    assert main(["report", str(job)]) == 0


def test_a_lost_row_comes_back_only_where_the_checkpoint_shows_how_the_trial_ended(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rnn.checkpoint import load_checkpoint
    from rnn.config import RunConfig
    from rnn.train import Trainer

    spec, job = _trained(tmp_path)
    rows = {r["trial_id"]: r for r in pq.read_table(job / "trials.parquet").to_pylist()}
    done, cut = sorted(rows)
    # Trial `cut` as if its best checkpoint were from step 10 of 20 (the same config: a run paused there).
    config = RunConfig.from_dict(load_checkpoint(job / "checkpoints" / cut / "best.pt")["config"])
    for _ in Trainer(config, tmp_path / "paused", device="cpu").iter_fit(pause_at_step=10):
        pass
    shutil.copyfile(tmp_path / "paused" / "best.pt", job / "checkpoints" / cut / "best.pt")

    _truncate(job / "trials.parquet")
    assert main(["report", str(job)]) == 2
    capsys.readouterr()
    assert main(["repair", str(job)]) == 0
    out = capsys.readouterr().out
    assert (f"rebuilt trial {done}'s row from checkpoints/{done}/best.pt: completed at step 20, the end of its step "
            "budget") in out and "unknown, left empty: device, precision" in out
    assert (f"lost: trial {cut}'s row (its best checkpoint is from step 10 of 20, so how it ended is not known): "
            "it runs again at the next run, from its best checkpoint (step 10)") in out
    (back,) = pq.read_table(job / "trials.parquet").to_pylist()
    assert {k: back[k] for k in KEPT} == {k: rows[done][k] for k in KEPT}
    assert {k: v for k, v in back.items() if "." in k} == {k: v for k, v in rows[done].items() if "." in k}
    assert back["device"] is None and back["started_at"] is None and back["attempts"] is None
    assert json.loads(back["config_json"]) == json.loads(rows[done]["config_json"])
    assert main(["best", str(job)]) == 0 and main(["report", str(job)]) == 0
    capsys.readouterr()

    # The next run trains only the lost one, from its checkpoint, and the job is whole again.
    outcome = run_job(load_job(spec), backend=LocalBackend(), live_report_s=0)
    assert outcome.exit_code == 0
    after = {r["trial_id"]: r for r in ResultsStore(job).read_trials().to_pylist()}
    assert sorted(after) == sorted(rows) and after[done]["started_at"] is None  # not trained again
    assert after[cut]["status"] == "completed" and after[cut]["steps"] == 20
