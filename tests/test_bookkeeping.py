"""Bookkeeping that scales: trial parts, compaction, crash safety, typed records, the manifest history.

Real files and real Arrow/Parquet on ``tmp_path``; no Ray, no timing (speed lives in
``python -m bench.bookkeeping``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import eval_record, throughput_row, trial_of
from orchestrator.report.render import build_report
from orchestrator.results import (
    THROUGHPUT_FIXED,
    TRIAL_FIXED,
    JobLock,
    ResultsError,
    ResultsStore,
    TrialRecord,
    eval_records,
    manifest_runs,
    read_manifest,
    throughput_records,
    trial_records,
    trial_row,
    write_manifest,
)
from orchestrator.results.clean import clean_job
from orchestrator.results.records import arrow_fields, config_from_json, config_to_json
from orchestrator.results.storage import Storage
from orchestrator.results.tables import record_row, trial_record
from orchestrator.run.faults import faults_from_env
from orchestrator.spec import trial_config
from rnn.events import EvalRecord, TrainResult, TrialStatus
from rnn.throughput_row import ThroughputRow, ThroughputStatus, mark_best

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def _config(cell: str = "gru", seed: int = 0) -> dict[str, Any]:
    return {"data": {"level": "char"}, "model": {"cell": cell, "hidden_size": 32}, "train": {"lr": 0.01, "seed": seed}}


def _row(tid: str, status: str = "completed", loss: float = 1.5, **config: Any) -> dict[str, Any]:
    return {"trial_id": tid, "status": status, "best_val_loss": loss, "steps": 40, "attempts": 1,
            "started_at": T0, "finished_at": T0 + dt.timedelta(seconds=2),
            "checkpoint": f"checkpoints/{tid}/best.pt", "config": _config(**config)}


def _evals(n: int, loss: float = 2.0) -> list[EvalRecord]:
    """``n`` evaluations every 10 steps, the validation loss falling from ``loss``."""
    return [eval_record(10 * (i + 1), loss - 0.01 * i, train_loss=loss + 0.1) for i in range(n)]


def _snapshot(store: ResultsStore) -> tuple[list, list, list]:
    return (store.read_trials().to_pylist(), store.read_evals().to_pylist(), store.read_throughput().to_pylist())


def _parts(job: Path) -> list[str]:
    return sorted(os.listdir(job / "parts")) if (job / "parts").is_dir() else []


def _mixed_job(job: Path) -> ResultsStore:
    """Trials a, b compacted; then b rerun, c and a throughput trial d committed as parts."""
    store = ResultsStore(job)
    store.commit_trial(_row("a", loss=1.2), _evals(3, 1.2))
    store.commit_trial(_row("b", status="failed", loss=None), _evals(1, 3.0))
    store.compact()
    store.commit_trial(_row("b", loss=1.1, seed=1), _evals(4, 1.1))
    store.commit_trial(_row("c", status="oom", loss=None, cell="lstm"))
    store.commit_trial(_row("d", cell="rnn"), throughput=mark_best([throughput_row(8, 100.0), throughput_row(16, 180.0),
                                                                   throughput_row(32, None, ThroughputStatus.OOM)]))
    return store


# --- union, compaction ---------------------------------------------------------------------------


def test_union_equals_the_compacted_tables_and_a_part_wins_over_its_table_rows(tmp_path: Path) -> None:
    store = _mixed_job(tmp_path)
    union = _snapshot(store)
    trials, evals, throughput = union
    assert [r["trial_id"] for r in trials] == ["a", "b", "c", "d"]  # b keeps its place, c and d append
    b = trials[1]
    assert (b["status"], b["best_val_loss"], b["train.seed"]) == ("completed", 1.1, 1)
    assert [(e["trial_id"], e["step"]) for e in evals] == [("a", 10), ("a", 20), ("a", 30),
                                                            ("b", 10), ("b", 20), ("b", 30), ("b", 40)]
    assert [(t["trial_id"], t["batch_size"], t["is_best"], t["model.cell"]) for t in throughput] == [
        ("d", 8, False, "rnn"), ("d", 16, True, "rnn"), ("d", 32, False, "rnn")]
    assert store.compact() == 3 and _parts(tmp_path) == []
    assert _snapshot(store) == union
    assert _snapshot(ResultsStore(tmp_path)) == union  # from the files alone, in a fresh store
    on_disk = pq.read_table(tmp_path / "trials.parquet")
    assert on_disk.schema.names[: len(TRIAL_FIXED)] == TRIAL_FIXED.names
    assert on_disk["trial_id"].to_pylist() == ["a", "b", "c", "d"]
    throughput_names = pq.read_table(tmp_path / "throughput.parquet").schema.names
    assert throughput_names[: len(THROUGHPUT_FIXED)] == THROUGHPUT_FIXED.names


def test_compacting_twice_is_idempotent(tmp_path: Path) -> None:
    store = _mixed_job(tmp_path)
    store.compact()
    files = {name: (tmp_path / name).read_bytes() for name in ("trials.parquet", "evals.parquet", "throughput.parquet")}
    assert store.compact() == 0
    assert {name: (tmp_path / name).read_bytes() for name in files} == files  # nothing rewritten


@pytest.mark.parametrize("crash_at", ["evals", "throughput", "trials", "first delete", "last delete"])
def test_a_crash_anywhere_in_compaction_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      crash_at: str) -> None:
    store = _mixed_job(tmp_path)
    before = _snapshot(store)
    write, delete = Storage.write_atomic, Storage.delete
    deletes = {"n": 0}

    def crashing_write(self: Storage, rel: str, fn: Any) -> None:
        write(self, rel, fn)
        if rel == f"{crash_at}.parquet":  # the table is written, then the process dies
            raise KeyboardInterrupt

    def crashing_delete(self: Storage, rel: str) -> bool:
        deletes["n"] += 1
        if (crash_at == "first delete" and deletes["n"] == 1) or (crash_at == "last delete" and deletes["n"] == 3):
            raise KeyboardInterrupt
        return delete(self, rel)

    monkeypatch.setattr(Storage, "write_atomic", crashing_write)
    monkeypatch.setattr(Storage, "delete", crashing_delete)
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.undo()
    assert _snapshot(ResultsStore(tmp_path)) == before  # a reader after the crash sees it all
    store.compact()  # the next compaction finishes the job
    assert _snapshot(ResultsStore(tmp_path)) == before and _parts(tmp_path) == []


def _batched_job(job: Path) -> ResultsStore:
    """The mixed job, plus a trial e whose failed first part was left behind, superseded."""
    store = _mixed_job(job)
    store.commit_trial(_row("e", status="failed", loss=None), _evals(1, 2.5))
    first = next(n for n in _parts(job) if n.endswith(".failed.e.arrow"))
    kept = (job / "parts" / first).read_bytes()
    store.commit_trial(_row("e", loss=1.05), _evals(2, 1.05))
    (job / "parts" / first).write_bytes(kept)  # a writer killed before deleting it
    return store


@pytest.mark.parametrize("batch", [1, 2, 1000])
def test_a_batched_compaction_gives_the_same_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     batch: int) -> None:
    monkeypatch.setattr("orchestrator.results.compaction.COMPACT_BATCH", batch)
    store = _batched_job(tmp_path)
    union = _snapshot(store)
    assert [r["trial_id"] for r in union[0]] == ["a", "b", "c", "d", "e"]
    assert store.compact() == 4 and _parts(tmp_path) == []
    assert _snapshot(ResultsStore(tmp_path)) == union


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.slow
def test_a_crash_at_any_step_of_a_batched_compaction_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   batch: int) -> None:
    # Every table write and every part deletion of a compaction in passes of `batch` parts, one
    # crash per run: after each, a reader sees what was committed, and compacting again finishes.
    monkeypatch.setattr("orchestrator.results.compaction.COMPACT_BATCH", batch)
    write, delete = Storage.write_atomic, Storage.delete
    steps = {"n": 0, "crash_at": -1}

    def counted(step: Any) -> Any:
        def wrapper(self: Storage, *args: Any) -> Any:
            steps["n"] += 1
            result = step(self, *args)
            if steps["n"] == steps["crash_at"]:  # it happened, then the process died
                raise KeyboardInterrupt
            return result
        return wrapper

    monkeypatch.setattr(Storage, "write_atomic", counted(write))
    monkeypatch.setattr(Storage, "delete", counted(delete))
    _batched_job(tmp_path / "dry")
    steps["n"] = 0
    ResultsStore(tmp_path / "dry").compact()
    total = steps["n"]
    # per pass: evals and trials (throughput once it has rows), then its parts (e's two)
    assert total == {1: 15, 2: 10}[batch]
    for k in range(1, total + 1):
        job = tmp_path / f"crash-{k}"
        store = _batched_job(job)
        before = _snapshot(store)
        steps.update(n=0, crash_at=k)
        with pytest.raises(KeyboardInterrupt):
            store.compact()
        steps["crash_at"] = -1
        assert _snapshot(ResultsStore(job)) == before, k
        ResultsStore(job).compact()
        assert _snapshot(ResultsStore(job)) == before and _parts(job) == [], k


def test_a_rerun_replaces_its_part_and_a_superseded_part_never_wins(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.commit_trial(_row("a", status="failed", loss=None), _evals(2))
    store.commit_trial(_row("a", loss=0.9), _evals(5))
    assert len(_parts(tmp_path)) == 1 and ".completed.a.arrow" in _parts(tmp_path)[0]
    # A superseded part left behind (a writer killed between its commit and the delete) is ignored.
    newest = _parts(tmp_path)[0]
    (tmp_path / "parts" / newest.replace(newest[:20], "0" * 19 + "1").replace("completed", "failed")).write_bytes(
        (tmp_path / "parts" / newest).read_bytes())
    assert store.read_trials()["status"].to_pylist() == ["completed"] and store.read_evals().num_rows == 5
    assert store.finished_trial_ids({"failed"}) == set()
    store.compact()
    assert _parts(tmp_path) == [] and store.read_trials()["best_val_loss"].to_pylist() == [0.9]


def test_stores_share_a_job_folder_only_when_handed_it(tmp_path: Path) -> None:
    from orchestrator.results import store as store_module

    assert not any(isinstance(v, dict) for k, v in vars(store_module).items() if k.startswith("_FOLDER"))
    first = ResultsStore(tmp_path)
    shared, own = ResultsStore(first.folder), ResultsStore(tmp_path)
    assert shared.folder is first.folder and own.folder is not first.folder
    first.commit_trial(_row("a", status="failed", loss=None))
    shared.commit_trial(_row("a"))  # knows first's part from the shared map: deletes it, lists nothing
    assert len(_parts(tmp_path)) == 1 and ".completed.a." in _parts(tmp_path)[0]
    assert first.folder.newest_parts()["a"].status == "completed"
    own.commit_trial(_row("a", loss=0.8))  # its first commit lists parts/: it supersedes that one too
    assert len(_parts(tmp_path)) == 1 and first.read_trials()["best_val_loss"].to_pylist() == [0.8]
    assert own.compact() == 1 and _parts(tmp_path) == []
    first.commit_trial(_row("a", loss=0.7))  # a stale map after another folder's compaction costs nothing
    assert [r["best_val_loss"] for r in ResultsStore(tmp_path).read_trials().to_pylist()] == [0.7]
    with pytest.raises(ValueError, match="filesystem applies to a job folder path"):
        ResultsStore(first.folder, filesystem=object())


def test_leftover_temp_parts_are_ignored_and_cleaned_and_a_damaged_part_names_itself(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.commit_trial(_row("a"))
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    temp = tmp_path / "parts" / f".00000000000000000009.completed.b.arrow.{dead_pid}.0123abcd.tmp"
    temp.write_bytes(b"ARROW1 half")
    assert store.finished_trial_ids() == {"a"} and store.read_trials()["trial_id"].to_pylist() == ["a"]
    with JobLock(tmp_path):  # the next run to take the lock removes it
        pass
    assert not temp.exists()
    damaged = tmp_path / "parts" / "00000000000000000009.completed.b.arrow"
    damaged.write_bytes(b"not arrow")
    with pytest.raises(ResultsError, match=r"cannot read .*00000000000000000009\.completed\.b\.arrow.*repair"):
        store.read_trials()


def test_finished_trial_ids_reads_statuses_without_opening_parts(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = _mixed_job(tmp_path)

    def no_part_reads(self: Storage, rel: str) -> None:
        raise AssertionError(f"finished_trial_ids opened {rel}")

    monkeypatch.setattr(Storage, "read_ipc", no_part_reads)
    assert ResultsStore(tmp_path).finished_trial_ids() == {"a", "b", "c", "d"}
    assert store.finished_trial_ids({TrialStatus.COMPLETED}) == {"a", "b", "d"}
    assert store.finished_trial_ids({"oom", "failed"}) == {"c"}  # b's failed row is superseded by its part
    # A status this version does not know (a newer orchestrator's) is still a finished trial's.
    store.commit_trial({**_row("e"), "status": "completed"})
    newest = _parts(tmp_path)[-1]
    os.rename(tmp_path / "parts" / newest, tmp_path / "parts" / newest.replace("completed", "timeout"))
    assert "e" in store.finished_trial_ids({"timeout"})


# --- the commit is the one point where a trial becomes finished ----------------------------------


def test_a_full_disk_while_writing_the_part_commits_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from orchestrator.results import store as R

    store = ResultsStore(tmp_path)
    store.commit_trial(_row("a"), _evals(2))

    def disk_full(table: pa.Table, sink: Any) -> None:
        sink.write(b"ARROW1")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R, "_write_ipc", disk_full)
    with pytest.raises(ResultsError, match="No space left on device; check the output folder"):
        store.commit_trial(_row("b"), _evals(3))
    monkeypatch.undo()
    assert store.finished_trial_ids() == {"a"} and store.read_evals()["trial_id"].to_pylist() == ["a", "a"]
    assert [p for p in os.listdir(tmp_path / "parts") if p.endswith(".tmp")] == []


def test_driver_side_disk_full_drill_leaves_the_trial_unfinished(tmp_path: Path) -> None:
    """The ``commit`` fault: the recorder's commit of a trial fails as on a full disk."""
    from orchestrator.run.attempt import Attempt
    from orchestrator.run.progress import Progress
    from orchestrator.run.recorder import Recorder

    faults = tuple(faults_from_env({"RNN_ORCH_FAULTS": json.dumps([{"trial": "t1", "kind": "commit"}])}))
    store = ResultsStore(tmp_path)
    recorder = Recorder(store, Progress(2, 1), faults=faults)
    result = TrainResult(status=TrialStatus.COMPLETED, steps=30, params=100, device="cpu", precision="fp32",
                         train_time_s=1.0, best_val_loss=1.4, best_val_bpc=2.0, best_step=30, evals=tuple(_evals(3)))
    for tid in ("t1", "t2"):
        state = Attempt(trial=trial_of(tid, _config()), tag=tid, started_at=T0)
        if tid == "t1":
            with pytest.raises(ResultsError, match="No space left on device.*run the same command again"):
                recorder.finish(state, TrialStatus.COMPLETED, result=result)
        else:
            recorder.finish(state, TrialStatus.COMPLETED, result=result)
    assert store.finished_trial_ids() == {"t2"}  # t1 is not finished: the rerun trains it again
    assert set(store.read_evals()["trial_id"].to_pylist()) == {"t2"}
    store.compact()
    assert ResultsStore(tmp_path).finished_trial_ids() == {"t2"}


# --- report and clean over a folder that was not compacted ---------------------------------------


def test_report_compacts_when_idle_and_only_reads_while_a_run_holds_the_folder(tmp_path: Path) -> None:
    job = tmp_path / "job"
    committed = _snapshot(_mixed_job(job))
    with JobLock(job):  # a live run
        md = build_report(job)[0].read_text()
        assert len(_parts(job)) == 3  # read, not written
    assert "Trials: 4." in md and "| completed | 3 |" in md
    assert build_report(job)[0].read_text().split("Generated")[1][30:] == md.split("Generated")[1][30:]
    assert _parts(job) == [] and pq.read_table(job / "trials.parquet").num_rows == 4
    assert _snapshot(ResultsStore(job)) == committed  # the report's compaction kept every row of every table


def test_clean_over_parts(tmp_path: Path) -> None:
    job = tmp_path / "job"
    store = _mixed_job(job)
    for tid in "abcd":
        store.write_checkpoint_bytes(tid, b"weights")
    dry = clean_job(str(job), dry_run=True)
    assert dry.removed == ["checkpoints/c/best.pt"] and len(_parts(job)) == 3  # a dry run writes nothing
    report = clean_job(str(job))
    assert report.removed == ["checkpoints/c/best.pt"] and not (job / "checkpoints/c").exists()
    assert _parts(job) == []  # it held the lock: the parts were compacted first
    rows = {r["trial_id"]: r for r in ResultsStore(job).read_trials().to_pylist()}
    assert rows["c"]["checkpoint"] is None and rows["b"]["checkpoint"] == "checkpoints/b/best.pt"


# --- typed records --------------------------------------------------------------------------------


def test_schemas_are_derived_from_the_records() -> None:
    assert TRIAL_FIXED.names == [f.name for f in dataclasses.fields(TrialRecord)]
    assert THROUGHPUT_FIXED.names == ["trial_id", *(f.name for f in dataclasses.fields(ThroughputRow))]
    assert TRIAL_FIXED.field("attempts").type == pa.int32()
    assert TRIAL_FIXED.field("started_at").type == pa.timestamp("us", tz="UTC")
    assert TRIAL_FIXED.field("status").type == pa.string() == THROUGHPUT_FIXED.field("status").type
    assert THROUGHPUT_FIXED.field("is_best").type == pa.bool_()

    @dataclasses.dataclass
    class Bad:
        x: list

    with pytest.raises(TypeError, match="Bad.x has type"):
        arrow_fields(Bad)


def test_records_round_trip_through_parts_and_parquet(tmp_path: Path) -> None:
    # Every field set (none left at its default), so a field the row or the schema drops shows.
    trial = TrialRecord(trial_id="r1", status=TrialStatus.EARLY_STOPPED, best_val_loss=1.25, best_val_bpc=1.8,
                        best_val_accuracy=0.6, best_step=40, params=1234, steps=50, device="cuda", precision="bf16",
                        train_time_s=2.5, started_at=T0, finished_at=T0 + dt.timedelta(seconds=3), error="late",
                        checkpoint="checkpoints/r1/best.pt", attempts=2, corpus_sha256="ab" * 32, vocab_size=65,
                        recurrence="triton", compiled=True, compile_s=12.5, tf32=False,
                        config_json=config_to_json(_config()), unigram_loss=3.3, eval_time_s=0.4,
                        val_coverage=0.5)
    assert all(getattr(trial, f.name) != f.default for f in dataclasses.fields(TrialRecord))
    evals = [dataclasses.replace(e, train_objective=e.train_loss + 0.05) for e in _evals(4)]
    rows = mark_best([throughput_row(8, 100.0, recurrence="triton", compiled=True, compile_s=1.5, tf32=True),
                      throughput_row(16, 150.0), throughput_row(32, None, ThroughputStatus.OOM)])
    store = ResultsStore(tmp_path)
    store.commit_trial(record_row(trial), evals, rows)  # the row as trial_row builds it
    for _ in range(2):  # from the part, then from the Parquet tables
        assert trial_records(store.read_trials()) == [trial]
        assert trial_records(store.read_trials())[0].status is TrialStatus.EARLY_STOPPED  # the enum, not its value
        assert eval_records(store.read_evals(), "r1") == evals
        assert throughput_records(store.read_throughput()) == rows
        assert store.read_trials()["model.cell"].to_pylist() == ["gru"]  # the dotted columns, from config_json
        assert "config_json" not in store.read_throughput().column_names  # a trials column only
        store.compact()
    assert config_from_json(trial_records(store.read_trials())[0].config_json) == _config()
    assert rows[1].is_best and throughput_records(store.read_throughput())[2].status is ThroughputStatus.OOM
    # stored as text
    assert pq.read_table(tmp_path / "trials.parquet").column("status").to_pylist() == ["early_stopped"]
    assert pq.read_table(tmp_path / "throughput.parquet").column("status").to_pylist() == ["ok", "ok", "oom"]


def test_trial_row_is_its_trial_record_as_a_row(tmp_path: Path) -> None:
    result = TrainResult(status=TrialStatus.COMPLETED, steps=80, params=999, device="cpu", precision="fp32",
                         train_time_s=4.0, best_val_loss=1.1, best_val_bpc=1.6, best_val_accuracy=0.7, best_step=60,
                         corpus_sha256="cd" * 32, vocab_size=65)
    trial = trial_of("t1", _config("lstm", 2))
    args: dict[str, Any] = dict(status="completed", result=result, attempts=3, started_at=T0, finished_at=T0,
                                info={"params": 5, "recurrence": "torch", "tf32": False, "host": "n1"},
                                checkpoint="checkpoints/t1/best.pt")
    record = trial_record(trial, **args)
    assert record.status is TrialStatus.COMPLETED and record.params == 999  # the result's value over the start event's
    assert (record.recurrence, record.tf32, record.attempts) == ("torch", False, 3)  # what only the start event said
    row = trial_row(trial, **args)
    assert row["config"]["model"]["cell"] == "lstm" and {k: v for k, v in row.items() if k != "config"} == {
        f.name: getattr(record, f.name) for f in dataclasses.fields(TrialRecord)}
    store = ResultsStore(tmp_path)
    store.commit_trial(row)
    assert trial_records(store.read_trials()) == [record]
    assert config_from_json(record.config_json) == trial_config(trial)  # the resolved config, whole
    with pytest.raises(ValueError, match="status 'done' is not one of"):
        trial_record(trial, status="done")


def test_throughput_row_status_is_a_closed_set() -> None:
    measured = throughput_row(8, 1.0).to_dict()
    assert throughput_row(8, 1.0).status is ThroughputStatus.OK
    assert ThroughputRow(**{**measured, "status": "oom"}).status == "oom"
    with pytest.raises(ValueError, match="expected one of ok, oom, error"):
        ThroughputRow(**{**measured, "status": "OOM"})


# --- the manifest's history --------------------------------------------------------------------------


def test_manifest_keeps_the_first_invocation_and_records_each_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not a git repository
    job = tmp_path / "job"
    spec = "name: x\nkind: train\n"
    for i, run_id in enumerate(("r1", "r2", "r3")):
        text = spec if i < 2 else spec + "# edited\n"
        write_manifest(job, spec_text=text, spec_path="jobs/x.yaml", run_id=run_id,
                       extra={"name": "x", "kind": "train", "trials": 4})
        devices = [{"host": f"node{i}", "device": "cuda", "device_name": f"GPU{i}"}]
        write_manifest(job, spec_text=text, spec_path="jobs/x.yaml", run_id=run_id, finished=True,
                       extra={"name": "x", "kind": "train", "trials": 4, "devices": devices,
                              "corpus_sha256": {"builtin": f"{i}" * 64}, "trials_run": 4 - i})
    m = read_manifest(job)
    assert m["format"] == 2 and [r["run_id"] for r in m["runs"]] == ["r1", "r2", "r3"]
    assert m["devices"] == [{"host": "node0", "device": "cuda", "device_name": "GPU0"}]  # the first run's
    assert m["corpus_sha256"] == {"builtin": "0" * 64} and m["trials_run"] == 4 and m["spec_text"] == spec
    first, second, third = m["runs"]
    assert [r["trials_run"] for r in m["runs"]] == [4, 3, 2]
    assert second["devices"][0]["device_name"] == "GPU1" and third["corpus_sha256"] == {"builtin": "2" * 64}
    for r in m["runs"]:
        assert dt.datetime.fromisoformat(r["started_at"]) <= dt.datetime.fromisoformat(r["finished_at"])
        assert r["versions"]["pyarrow"] == pa.__version__ and r["host"]["hostname"] and r["git_commit"] is None
    assert "spec_text" not in second and third["spec_text"].endswith("# edited\n")  # only when it changed
    assert first["spec_sha256"] != third["spec_sha256"]
    assert manifest_runs(m) == m["runs"]


def test_an_old_single_record_manifest_is_still_read_and_extended(tmp_path: Path) -> None:
    job = tmp_path / "job"
    job.mkdir()
    old = {"created_at": "2026-01-01T00:00:00+00:00", "spec_path": "jobs/x.yaml", "spec_text": "name: x\nkind: train\n",
           "corpus_sha256": {"builtin": "ab" * 32}, "devices": [{"host": "old", "device": "cpu"}],
           "versions": {"torch": "2.12"}, "host": {"hostname": "old", "platform": "linux"},
           "git_commit": "abc123", "git_dirty": False, "name": "x", "kind": "train", "trials": 1}
    (job / "manifest.json").write_text(json.dumps(old))
    runs = manifest_runs(read_manifest(job))
    assert len(runs) == 1 and runs[0]["started_at"] == old["created_at"] and runs[0]["git_commit"] == "abc123"
    ResultsStore(job).commit_trial(_row("a"))
    md = build_report(job)[0].read_text()
    assert "abc123" in md and "| torch | 2.12 |" in md and "## Runs" not in md
    write_manifest(job, "name: x\nkind: train\n", "jobs/x.yaml", {"trials_run": 1}, run_id="new", finished=True)
    m = read_manifest(job)
    assert {k: m[k] for k in old} == old  # the first invocation's fields are kept
    assert [r["run_id"] for r in m["runs"]] == [None, "new"] and m["runs"][0]["devices"] == old["devices"]
    md = build_report(job)[0].read_text()
    assert "## Runs" in md and "| 1 | 2026-01-01T00:00:00+00:00 | not finished | — | abc123 | 2.12 | old: cpu |" in md


def test_trial_row_commits_as_the_dispatcher_builds_it(tmp_path: Path) -> None:
    trial = trial_of("t9", _config("lstm", 3))
    store = ResultsStore(tmp_path)
    store.commit_trial(trial_row(trial, status=TrialStatus.OOM, error="CUDA out of memory",
                                 info={"params": 7, "device": "cuda", "host": "n1"}, started_at=T0, finished_at=T0))
    (rec,) = trial_records(store.read_trials())
    assert (rec.status, rec.params, rec.device, rec.error) == (TrialStatus.OOM, 7, "cuda", "CUDA out of memory")
