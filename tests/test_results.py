"""Results tables: explicit schemas, commits and their validation, atomic writes, filesystems, the lock.

Compaction, crash safety of parts and the manifest history are in test_bookkeeping.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from conftest import REPO, eval_record, trial_of
from orchestrator.results import (
    EVAL_SCHEMA,
    FAILURE_STATUSES,
    SUCCESS_STATUSES,
    TERMINAL_STATUSES,
    THROUGHPUT_FIXED,
    THROUGHPUT_STATUSES,
    TRIAL_FIXED,
    JobLock,
    RecordError,
    ResultsError,
    ResultsLockedError,
    ResultsStore,
    flatten_config,
    fresh_start,
    read_manifest,
    trial_row,
    write_manifest,
)
from orchestrator.results import store as R
from rnn.events import EvalRecord, TrainResult, TrialStatus
from rnn.throughput_row import ThroughputStatus

UTC = dt.timezone.utc
T0 = dt.datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _row(tid: str, status: str = "completed", **config_overrides: object) -> dict:
    config = {"data": {"level": "char", "seq_len": 64}, "model": {"cell": "gru"}, "train": {"lr": 0.002, "seed": 0}}
    for dotted, value in config_overrides.items():
        section, key = dotted.split("__")
        config[section][key] = value
    return {
        "trial_id": tid, "status": status, "best_val_loss": 1.25, "best_val_bpc": 1.8,
        "best_val_accuracy": 0.6, "best_step": 40, "params": 1234, "steps": 50, "device": "cpu",
        "precision": "fp32", "train_time_s": 2.5, "started_at": T0, "finished_at": T0 + dt.timedelta(seconds=3),
        "error": None, "checkpoint": f"checkpoints/{tid}/best.pt", "attempts": 1,
        "corpus_sha256": "ab" * 32, "vocab_size": 65, "config": config,
    }


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


# --- schemas and round trips ---------------------------------------------------------------


def test_trials_round_trip_with_exact_schema(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "job")
    store.commit_trial(_row("t1"))
    assert ResultsStore(tmp_path / "job").read_trials().to_pylist() == store.read_trials().to_pylist()
    store.compact()
    table = ResultsStore(tmp_path / "job").read_trials()
    assert table.to_pylist() == pq.read_table(tmp_path / "job" / "trials.parquet").to_pylist()
    assert table.schema.remove_metadata() == pa.schema([
        *TRIAL_FIXED,
        ("data.level", pa.string()), ("data.seq_len", pa.int64()), ("model.cell", pa.string()),
        ("train.lr", pa.float64()), ("train.seed", pa.int64()),
    ])
    row = table.to_pylist()[0]
    assert row["started_at"] == T0 and row["started_at"].utcoffset() == dt.timedelta(0)
    assert row["attempts"] == 1 and row["model.cell"] == "gru" and row["train.lr"] == 0.002
    assert table.schema.field("attempts").type == pa.int32()


@pytest.mark.parametrize("compact_between", [False, True])
def test_a_rerun_replaces_the_row_and_keeps_its_place(tmp_path: Path, compact_between: bool) -> None:
    store = ResultsStore(tmp_path)
    for tid in ("a", "b", "c"):
        store.commit_trial(_row(tid, status="failed"))
    if compact_between:
        store.compact()
    store.commit_trial({**_row("b"), "attempts": 2, "best_val_loss": 0.5})
    # A trial in the table keeps its place; one known only from parts sits in the order of its
    # latest commit (the runner compacts at start and end of each run, so a rerun finds it in the table).
    order = ["a", "b", "c"] if compact_between else ["a", "c", "b"]
    for _ in range(2):  # the union, then the compacted table
        table = store.read_trials()
        assert table["trial_id"].to_pylist() == order
        b = table.to_pylist()[order.index("b")]
        assert (b["status"], b["attempts"], b["best_val_loss"]) == ("completed", 2, 0.5)
        store.compact()
    assert sorted(os.listdir(tmp_path / "parts")) == []
    assert store.finished_trial_ids() == {"a", "b", "c"}
    assert store.finished_trial_ids(SUCCESS_STATUSES) == {"b"}
    assert store.finished_trial_ids([TrialStatus.FAILED]) == {"a", "c"}


def test_statuses_are_enum_sets_that_match_the_strings_a_table_holds(tmp_path: Path) -> None:
    sets = (TERMINAL_STATUSES, SUCCESS_STATUSES, FAILURE_STATUSES)
    assert all(isinstance(s, TrialStatus) for group in sets for s in group)
    assert SUCCESS_STATUSES == {TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED}
    assert FAILURE_STATUSES == {TrialStatus.FAILED, TrialStatus.OOM, TrialStatus.DIVERGED, TrialStatus.TIMEOUT}
    assert TERMINAL_STATUSES == set(TrialStatus) - {TrialStatus.PAUSED}
    assert THROUGHPUT_STATUSES == tuple(ThroughputStatus)
    store = ResultsStore(tmp_path)
    for tid, status in (("a", "completed"), ("b", "oom"), ("c", "paused")):
        store.commit_trial(_row(tid, status=status))
    rows = store.read_trials().to_pylist()
    assert all(type(r["status"]) is str for r in rows)  # a table gives the stored text back
    assert [r["trial_id"] for r in rows if r["status"] in SUCCESS_STATUSES] == ["a"]
    assert [r["trial_id"] for r in rows if r["status"] in FAILURE_STATUSES] == ["b"]
    assert [r["trial_id"] for r in rows if r["status"] not in TERMINAL_STATUSES] == ["c"]
    assert TERMINAL_STATUSES - {"failed"} == TERMINAL_STATUSES - {TrialStatus.FAILED}  # the runner's skip set


def test_config_column_types_promote_and_stay_stable(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)

    def upsert(row: dict) -> None:  # commit and compact: the types on disk carry over
        store.commit_trial(row)
        store.compact()

    upsert(_row("a", train__lr=1, train__clip=None, model__tie=True, train__sizes=[32, 64]))
    types = store.read_trials().schema
    assert types.field("train.lr").type == pa.int64() and types.field("train.clip").type == pa.null()
    assert types.field("model.tie").type == pa.bool_() and types.field("train.sizes").type == pa.string()
    upsert(_row("b", train__lr=0.5, train__clip=1.0, model__tie=False, train__sizes=(1,)))
    table = store.read_trials()
    assert table.schema.field("train.lr").type == pa.float64()
    assert table["train.lr"].to_pylist() == [1.0, 0.5]
    assert table.schema.field("train.clip").type == pa.float64()
    assert table["train.clip"].to_pylist() == [None, 1.0]
    assert table["train.sizes"].to_pylist() == ["[32, 64]", "[1]"]
    # Replacing the only row with a value by a None keeps the column's type (no flip to null).
    upsert(_row("b", train__lr=0.5, train__clip=None))
    assert store.read_trials().schema.field("train.clip").type == pa.float64()
    # A column that mixes kinds becomes string, never loses values.
    store.commit_trial(_row("c", model__tie="yes"))  # the union promotes like compaction does
    assert store.read_trials()["model.tie"].to_pylist() == ["true", None, "yes"]
    store.compact()
    assert store.read_trials()["model.tie"].to_pylist() == ["true", None, "yes"]  # b was replaced without it


def test_flatten_config() -> None:
    @dataclasses.dataclass
    class ES:
        patience: int = 3

    flat = flatten_config({"train": {"early_stopping": ES(), "sched": TrialStatus.COMPLETED, "opt": {}},
                           "model": {"cell": "gru", "dims": (1, 2)}, "x": Path("/a")})
    assert flat == {"train.early_stopping.patience": 3, "train.sched": "completed", "train.opt": "{}",
                    "model.cell": "gru", "model.dims": "[1, 2]", "x": "/a"}


def test_bad_records_are_refused_with_the_reason_and_nothing_is_written(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "job")
    bad = [
        ({**_row("a"), "best_val_los": 1.0}, (), (), "unknown trials column.*best_val_los"),
        ({**_row("a"), "status": "done"}, (), (), "status 'done'"),
        ({**_row("a"), "started_at": dt.datetime(2025, 1, 1)}, (), (), "timezone-aware"),
        ({**_row("a"), "config": {"status": 1}}, (), (), "clash"),
        ({**_row("a"), "config": {"@evals": 1}}, (), (), "reserved"),
        ({**_row("a"), "params": "many"}, (), (), "column 'params'"),
        ({**_row("../a")}, (), (), "cannot name a results file"),
        (_row("a"), [eval_record(1, 1.5), {"step": 2}], (), "EvalRecord fields"),
        (_row("a"), [{**dataclasses.asdict(eval_record(1, 1.5)), "val_loss": "low"}], (), "evals row does not fit"),
        (_row("a"), (), [{"batch_size": 1, "status": "OOM"}], "throughput status 'OOM'"),
        (_row("a"), (), [{"batch_size": 1, "status": "ok", "samples": 3.0}], "unknown throughput field"),
    ]
    for row, evals, throughput, match in bad:
        with pytest.raises(RecordError, match=match) as err:
            store.commit_trial(row, evals, throughput)
        assert isinstance(err.value, ValueError) and isinstance(err.value, ResultsError)
        assert "nothing of trial" in str(err.value) and "not finished" in str(err.value)
    assert not (tmp_path / "job").exists()  # validated before anything was written
    assert store.finished_trial_ids() == set()


def test_evals_are_replaced_by_a_recommit_never_duplicated(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.commit_trial(_row("a"), [eval_record(10, 1.5), eval_record(20, 1.5)])
    store.commit_trial(_row("b"), [dataclasses.asdict(eval_record(10, 1.5))])
    store.compact()
    rerun = [eval_record(step, 1.5) for step in (10, 20, 30)]
    store.commit_trial(_row("a"), rerun)  # a rerun reports its full history
    for _ in range(2):  # the union, then the compacted table
        table = store.read_evals()
        assert table.schema == EVAL_SCHEMA
        assert list(zip(table["trial_id"].to_pylist(), table["step"].to_pylist(), strict=True)) == [
            ("b", 10), ("a", 10), ("a", 20), ("a", 30)]
        store.compact()
    assert EVAL_SCHEMA.names == ["trial_id", *(f.name for f in dataclasses.fields(EvalRecord))]
    assert EVAL_SCHEMA.field("step").type == pa.int64() and EVAL_SCHEMA.field("epoch").type == pa.float64()
    store.commit_trial(_row("a", status="failed"))  # a rerun that ended without evaluations
    assert store.read_evals()["trial_id"].to_pylist() == ["b"]


def test_empty_store_reads_empty_tables(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "nothing-yet")
    assert store.read_trials().schema == TRIAL_FIXED and store.read_trials().num_rows == 0
    assert store.read_evals().num_rows == 0 and store.read_throughput().num_rows == 0
    assert store.finished_trial_ids() == set()
    assert not (tmp_path / "nothing-yet").exists()  # reading creates nothing


def test_throughput_round_trip_keeps_the_marked_best(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    rows = [
        {"batch_size": 32, "status": "ok", "samples_per_s": 100.0, "tokens_per_s": 6400.0, "step_time_ms": 3.0,
         "step_time_ms_max": 4.0, "peak_mem_mb": 10.0, "device": "cpu", "device_name": "x86",
         "precision": "fp32", "torch_version": "2.13"},
        {"batch_size": 64, "status": ThroughputStatus.OK, "samples_per_s": 150.0, "is_best": True},
        {"batch_size": 128, "status": "oom", "error": "out of memory"},
    ]
    cfg = {"model": {"cell": "lstm"}, "throughput": {"batch_sizes": "auto"}}
    store.commit_trial({"trial_id": "t1", "status": "completed", "config": cfg}, throughput=rows)
    store.commit_trial({"trial_id": "t1", "status": "completed", "config": cfg}, throughput=rows)  # no duplicates
    store.compact()
    table = store.read_throughput()
    assert table.schema.remove_metadata() == pa.schema(
        [*THROUGHPUT_FIXED, ("model.cell", pa.string()), ("throughput.batch_sizes", pa.string())])
    assert table["batch_size"].to_pylist() == [32, 64, 128]
    assert table["is_best"].to_pylist() == [False, True, False]  # as marked: the store marks nothing
    assert table["model.cell"].to_pylist() == ["lstm"] * 3 and table["status"].to_pylist() == ["ok", "ok", "oom"]


# --- atomic writes ---------------------------------------------------------------------------


def test_crash_inside_the_writer_commits_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultsStore(tmp_path)
    store.commit_trial(_row("a"))
    before = sorted(os.listdir(tmp_path / "parts"))

    def crash_midway(table: pa.Table, sink: object) -> None:
        sink.write(b"ARROW1 half a file")  # the temp file now holds garbage ...
        assert _temps(tmp_path)  # ... next to the real parts
        raise KeyboardInterrupt  # ... and the process is interrupted

    monkeypatch.setattr(R, "_write_ipc", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        store.commit_trial(_row("b"))
    assert sorted(os.listdir(tmp_path / "parts")) == before and _temps(tmp_path) == []
    assert store.finished_trial_ids() == {"a"}


def test_a_full_disk_at_the_rename_commits_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultsStore(tmp_path)
    store.commit_trial(_row("a"), [eval_record(1, 1.5)])

    def no_rename(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(R.os, "replace", no_rename)
    with pytest.raises(ResultsError, match=r"cannot write .*parts/\d+\.completed\.b\.arrow: No space left"):
        store.commit_trial(_row("b"), [eval_record(1, 1.5), eval_record(2, 1.5)])
    monkeypatch.undo()
    assert store.read_evals().num_rows == 1 and _temps(tmp_path) == []
    assert store.finished_trial_ids() == {"a"}  # b is not finished: the rerun trains it again


_WRITER = """
import datetime as dt, sys
from orchestrator.results import ResultsStore
store = ResultsStore(sys.argv[1])
i = 0
while True:
    i += 1
    store.commit_trial({"trial_id": f"t{i % 7}", "status": "completed", "steps": i,
                        "config": {"model": {"hidden": i}, "train": {"pad": "x" * (i % 50)}}})
    if i % 5 == 0:
        store.compact()  # readers must see whole tables and whole parts through compactions too
"""


def test_reader_never_sees_a_partial_file_even_when_the_writer_is_killed(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    store.commit_trial(_row("seed-row"))
    store.compact()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path)], cwd=REPO)
    try:
        reads, deadline, seen = 0, time.monotonic() + 30, {"seed-row"}
        while reads < 40 and time.monotonic() < deadline:  # every read is a whole, valid table
            table = store.read_trials()
            assert table.num_rows >= 1 and table.column_names[: len(TRIAL_FIXED)] == TRIAL_FIXED.names
            # Once a trial is committed it never drops out of a read, through compactions too.
            ids = set(table["trial_id"].to_pylist())
            assert ids >= seen, f"committed trials vanished from a read: {seen - ids}"
            seen = ids
            reads += 1 if table.num_rows > 1 else 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert reads == 40, "the writer subprocess never wrote"
    assert 2 <= store.read_trials().num_rows <= 8
    # The killed writer's temporary files are removed by the next run that takes the lock.
    stale = [tmp_path / f".trials.parquet.{proc.pid}.0123abcd.tmp",
             tmp_path / "parts" / f".00000000000000000001.completed.t1.arrow.{proc.pid}.0123abcd.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    assert store.read_trials().num_rows >= 2  # a temp part is not a part
    with JobLock(tmp_path):
        pass
    assert _temps(tmp_path) == []


def test_unwritable_output_names_the_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    store = ResultsStore(blocker / "job")
    with pytest.raises(ResultsError,
                       match=r"cannot create the results folder .*not-a-folder/job/parts: Not a directory"):
        store.commit_trial(_row("a"))
    with pytest.raises(ResultsError, match="not-a-folder"):
        JobLock(blocker / "job").acquire()


def test_checkpoint_bytes(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    rel = store.write_checkpoint_bytes("t1", b"weights")
    assert rel == "checkpoints/t1/best.pt"
    assert store.checkpoint_path("t1") == tmp_path / rel and (tmp_path / rel).read_bytes() == b"weights"
    store.write_checkpoint_bytes("t1", b"better")
    assert (tmp_path / rel).read_bytes() == b"better" and _temps(tmp_path) == []
    with pytest.raises(ValueError, match="cannot name a folder"):
        store.checkpoint_path("../evil")


# --- filesystems ---------------------------------------------------------------------------


def test_file_uri_and_a_pyarrow_filesystem(tmp_path: Path) -> None:
    uri_store = ResultsStore(f"file://{tmp_path}/viauri")
    uri_store.commit_trial(_row("a"))
    uri_store.compact()
    assert uri_store.is_local and (tmp_path / "viauri" / "trials.parquet").is_file()
    # A non-local pyarrow filesystem goes through open_output_stream + move.
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    remote = ResultsStore("remote/job", filesystem=fs)
    assert not remote.is_local
    remote.commit_trial(_row("a"))
    remote.commit_trial(_row("b"))
    remote.commit_trial(_row("a", model__cell="lstm"), [eval_record(1, 1.5)])
    assert len(os.listdir(tmp_path / "remote/job/parts")) == 2  # the superseded part of a is gone
    assert remote.read_trials()["model.cell"].to_pylist() == ["gru", "lstm"]  # commit order: b, then a again
    assert remote.compact() == 2 and os.listdir(tmp_path / "remote/job/parts") == []
    assert remote.read_trials()["model.cell"].to_pylist() == ["gru", "lstm"]
    assert remote.read_evals().num_rows == 1 and remote.finished_trial_ids() == {"a", "b"}
    assert remote.write_checkpoint_bytes("a", b"w") == "checkpoints/a/best.pt"
    assert (tmp_path / "remote/job/checkpoints/a/best.pt").read_bytes() == b"w"
    assert _temps(tmp_path) == []
    with pytest.raises(ResultsError, match="not a local folder"):
        remote.checkpoint_path("a")


# --- lock, fresh start, manifest -------------------------------------------------------------


def test_lock_refuses_a_second_holder_in_process(tmp_path: Path) -> None:
    with JobLock(tmp_path / "job"):
        with pytest.raises(ResultsLockedError) as err:
            JobLock(tmp_path / "job").acquire()  # a second open file description
        msg = str(err.value)
        assert f"another run (pid {os.getpid()}, started 20" in msg
        assert f"is writing to {tmp_path / 'job'}; wait for it or use a different output/name" in msg
    with JobLock(tmp_path / "job"):  # released on exit
        pass


_HOLDER = """
import sys
from orchestrator.results import JobLock
with JobLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_lock_refuses_another_process(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ResultsLockedError, match=f"pid {proc.pid}") as err:
            JobLock(tmp_path).acquire()
        assert err.value.pid == proc.pid
        with pytest.raises(ResultsLockedError):
            fresh_start(tmp_path)  # never move a folder that another run is writing
    finally:
        proc.communicate("", timeout=30)
    with JobLock(tmp_path):  # the holder exited
        pass


def test_fresh_start_moves_aside(tmp_path: Path) -> None:
    job = tmp_path / "job"
    assert fresh_start(job) is None
    ResultsStore(job).commit_trial(_row("a"))
    ResultsStore(job).compact()
    ResultsStore(job).commit_trial(_row("b"))  # a part not compacted yet moves with the rest
    first = Path(fresh_start(job))
    assert not job.exists() and (first / "trials.parquet").is_file()
    assert ResultsStore(first).finished_trial_ids() == {"a", "b"}
    assert first.name.startswith("job.old-") and first.name.endswith("Z")
    ResultsStore(job).commit_trial(_row("b"))
    ResultsStore(job).compact()
    second = Path(fresh_start(job))  # within the same second: a distinct name, nothing lost
    assert second != first and (second / "trials.parquet").is_file() and first.exists()


def test_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not a git repository
    path = write_manifest(tmp_path / "job", "name: x\nkind: train\n", "jobs/x.yaml",
                          {"name": "x", "corpus_sha256": {"builtin": "ab12"}, "devices": [{"type": "cpu"}]})
    m = json.loads(Path(path).read_text())
    assert m == read_manifest(tmp_path / "job")
    assert m["spec_text"] == "name: x\nkind: train\n" and m["spec_path"] == "jobs/x.yaml"
    assert m["corpus_sha256"] == {"builtin": "ab12"} and m["devices"] == [{"type": "cpu"}]
    assert m["versions"]["pyarrow"] == pa.__version__ and m["versions"]["python"].count(".") == 2
    assert set(m["versions"]) >= {"torch", "ray", "pyarrow", "tokenizers", "numpy", "python"}
    assert m["git_commit"] is None and m["host"]["hostname"]
    assert dt.datetime.fromisoformat(m["created_at"]).tzinfo is not None
    assert read_manifest(tmp_path / "elsewhere") is None


def test_manifest_records_the_git_commit_without_importing_torch_or_ray(tmp_path: Path) -> None:
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    code = textwrap.dedent("""
        import json, sys
        from orchestrator.results import write_manifest
        p = write_manifest(sys.argv[1], "name: x", None)
        assert "torch" not in sys.modules and "ray" not in sys.modules, "manifest imported torch/ray"
        print(json.load(open(p))["git_commit"])
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "job")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == head


def test_trial_row_from_a_train_result(tmp_path: Path) -> None:
    result = TrainResult(status=TrialStatus.EARLY_STOPPED, steps=80, params=999, device="cpu", precision="fp32",
                         train_time_s=4.0, best_val_loss=1.1, best_val_bpc=1.6, best_val_accuracy=0.7,
                         best_step=60, best_checkpoint="/node/local/best.pt", corpus_sha256="cd" * 32, vocab_size=65)
    trial = trial_of("t1", {"model": {"cell": "lstm"}, "train": {"seed": 3}})
    store = ResultsStore(tmp_path)
    store.commit_trial(trial_row(trial, status=result.status, result=result, attempts=2, started_at=T0,
                                 finished_at=T0, checkpoint=store.checkpoint_relpath("t1")))
    # A crash before any result: what the start event said still fills the row.
    crashed = trial_of("t2", {"model": {"cell": "gru"}, "train": {"seed": 3}})
    store.commit_trial(trial_row(crashed, status="oom", error="CUDA out of memory", info={"params": 5, "host": "n1"}))
    rows = {r["trial_id"]: r for r in store.read_trials().to_pylist()}
    assert rows["t1"]["status"] == "early_stopped" and rows["t1"]["checkpoint"] == "checkpoints/t1/best.pt"
    assert rows["t1"]["best_step"] == 60 and rows["t1"]["attempts"] == 2 and rows["t1"]["train.seed"] == 3
    assert (rows["t2"]["status"], rows["t2"]["params"], rows["t2"]["error"]) == ("oom", 5, "CUDA out of memory")
