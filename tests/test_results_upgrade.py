"""Job folders written by an earlier release (tests/data/job_001d89b, made by that commit's own
code) are read, reported and resumed by this one: columns added since then read as null, and
the next compaction writes them. A table missing any other column is still refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from orchestrator.cli import main
from orchestrator.results import EVAL_SCHEMA, THROUGHPUT_FIXED, TRIAL_FIXED, ResultsError, ResultsStore
from orchestrator.results.records import ADDED_COLUMNS

OLD = Path(__file__).resolve().parent / "data" / "job_001d89b"


@pytest.fixture
def old_jobs(tmp_path: Path) -> Path:
    shutil.copytree(OLD, tmp_path / "jobs", ignore=shutil.ignore_patterns("README.md"))
    return tmp_path / "jobs"


def test_the_fixture_predates_the_added_columns() -> None:
    trials = pq.read_schema(OLD / "old-train" / "trials.parquet").names
    evals = pq.read_schema(OLD / "old-train" / "evals.parquet").names
    throughput = pq.read_schema(OLD / "old-throughput" / "throughput.parquet").names
    assert not ADDED_COLUMNS & {*trials, *evals, *throughput}
    assert ADDED_COLUMNS == {*TRIAL_FIXED.names, *EVAL_SCHEMA.names, *THROUGHPUT_FIXED.names} - {
        *trials, *evals, *throughput}  # every column added since is declared, none forgotten
    assert len(list((OLD / "old-train" / "parts").glob("*.arrow"))) == 1  # and an old part


def test_old_tables_and_parts_read_with_the_added_columns_null(old_jobs: Path) -> None:
    store = ResultsStore(old_jobs / "old-train")
    trials = store.read_trials()
    assert trials.schema.names[: len(TRIAL_FIXED)] == TRIAL_FIXED.names
    assert trials.num_rows == 3 and set(trials["status"].to_pylist()) == {"completed"}
    assert trials["compiled"].to_pylist() == [None] * 3 and trials["recurrence"].null_count == 3
    assert "model.cell" in trials.schema.names  # the config columns follow, as before
    evals = store.read_evals()
    assert evals.schema == EVAL_SCHEMA and evals.num_rows == 6  # 2 of each trial, the part's included
    assert evals["train_objective"].null_count == 6 and evals["val_loss"].null_count == 0
    throughput = ResultsStore(old_jobs / "old-throughput").read_throughput()
    assert throughput["batch_size"].to_pylist() == [8, 16] and throughput["compile_s"].null_count == 2


def test_report_and_compaction_over_an_old_job_folder(old_jobs: Path) -> None:
    assert main(["report", str(old_jobs)]) == 0  # a folder of job folders: both reported
    for job in ("old-train", "old-throughput"):
        html = (old_jobs / job / "report.html").read_text(encoding="utf-8")
        assert "<svg" in html or "<img" in html, job
    train = old_jobs / "old-train"
    assert not list((train / "parts").glob("*.arrow"))  # report compacted the old part
    trials = pq.read_table(train / "trials.parquet")
    assert trials.schema.names[: len(TRIAL_FIXED)] == TRIAL_FIXED.names and trials.num_rows == 3
    assert pq.read_table(train / "evals.parquet").schema.names == EVAL_SCHEMA.names


def test_best_over_an_old_job_folder(old_jobs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["best", str(old_jobs / "old-train")]) == 0
    out = capsys.readouterr().out
    assert "name: old-train-best" in out and "the best of 3 ranked trials" in out


def test_a_table_missing_a_column_that_was_never_added_is_still_refused(old_jobs: Path) -> None:
    path = old_jobs / "old-train" / "trials.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["best_val_loss"]), path)
    with pytest.raises(ResultsError) as e:
        ResultsStore(old_jobs / "old-train").read_trials()
    assert "missing ['best_val_loss']" in str(e.value) and "written by another version" in str(e.value)
