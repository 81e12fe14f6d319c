"""Every reader of a job folder is total: random JSON shapes in the manifest and a search record,
random truncations of the tables and a trial part, then ``report``, ``best``, ``clean``,
``repair`` and the checks ``run`` makes before anything starts. Never a traceback: exit status
0 or 1 or 2, and a failure is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import completed_row, eval_curve
from orchestrator.cli import main
from orchestrator.errors import UsageError
from orchestrator.results import JobLock, ResultsError, ResultsStore
from orchestrator.run.runner import check_folder

pytestmark = pytest.mark.slow

SPEC_TEXT = "name: tiny\ndata: {corpus: builtin}\nmodel: {cell: lstm, hidden_size: 16}\ntrain: {max_steps: 20}\n"

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
#: A manifest-like object: the keys the readers look up, with any JSON value.
MANIFEST = st.fixed_dictionaries({}, optional={
    "runs": JSON, "spec_text": JSON, "name": JSON, "devices": JSON, "corpus_sha256": JSON, "format": JSON,
}) | JSON
#: A search record: the fields a record has, with any JSON value, or any JSON at all.
RECORD = st.fixed_dictionaries({}, optional={
    "number": JSON, "params": JSON, "values": JSON, "from_model": JSON, "trial_ids": JSON, "refused": JSON,
}) | JSON

FUZZ = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A job folder with two compacted trials, one trial part, a manifest and a search record."""
    job = tmp_path_factory.mktemp("pristine") / "tiny"
    store = ResultsStore(job)
    for tid, loss in (("aaaaaaaaaaaa", 1.5), ("bbbbbbbbbbbb", 1.7)):
        rel = store.write_checkpoint_bytes(tid, b"not a checkpoint")
        store.commit_trial(completed_row(tid, loss, {"model": {"cell": "lstm"}}, checkpoint=rel), eval_curve(loss))
    store.compact()
    store.commit_trial(completed_row("cccccccccccc", 1.9, {"model": {"cell": "gru"}}), eval_curve(1.9))
    (job / "manifest.json").write_text(json.dumps({"format": 2, "name": "tiny", "spec_text": SPEC_TEXT, "runs": []}))
    (job / "search").mkdir()
    (job / "search" / "000000.json").write_text(json.dumps(
        {"number": 0, "params": {}, "values": {}, "from_model": False, "trial_ids": ["aaaaaaaaaaaa"]}))
    return job


def _copy(pristine: Path, tmp_path: Path) -> Path:
    job = tmp_path / "tiny"
    if job.exists():
        shutil.rmtree(job)
    shutil.copytree(pristine, job)
    return job


def _every_reader_is_total(job: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    try:  # what run checks before it starts anything
        JobLock(job).check()
        check_folder(ResultsStore(job))
    except (ResultsError, UsageError):
        pass
    for command in (["best", str(job)], ["clean", str(job), "--dry-run"], ["report", str(job)], ["repair", str(job)]):
        status = main(command)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err, (command, err)
        assert status in (0, 1, 2), (command, status)
        if status:
            assert len(err.strip().splitlines()) == 1, (command, err)
    assert main(["report", str(job)]) == 0, capsys.readouterr().err  # repaired: usable


@FUZZ
@given(manifest=MANIFEST)
def test_any_manifest(pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest: Any) -> None:
    job = _copy(pristine, tmp_path)
    (job / "manifest.json").write_text(json.dumps(manifest))
    _every_reader_is_total(job, capsys)


@FUZZ
@given(record=RECORD)
def test_any_search_record(pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], record: Any) -> None:
    job = _copy(pristine, tmp_path)
    (job / "search" / "000000.json").write_text(json.dumps(record))
    _every_reader_is_total(job, capsys)


@FUZZ
@given(which=st.sampled_from(["trials.parquet", "evals.parquet", "part", "manifest.json"]),
       keep=st.floats(min_value=0.0, max_value=0.999), garbage=st.binary(max_size=16))
def test_any_truncation(pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str,
                        keep: float, garbage: bytes) -> None:
    job = _copy(pristine, tmp_path)
    path = next((job / "parts").glob("*.arrow")) if which == "part" else job / which
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] + garbage)
    _every_reader_is_total(job, capsys)
