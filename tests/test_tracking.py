"""``tracking:``: TensorBoard event files and MLflow runs written by the driver, and ``export``.

Everything is read back with the trackers' own readers (TensorBoard's ``EventAccumulator``,
MLflow's ``MlflowClient``) and compared with the job folder's ``evals.parquet``. The real MLflow
server (started, killed mid-sweep) is in ``test_tracking_server.py``.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, TINY_SPEC, ray_env, run_cli
from orchestrator.cli import main
from orchestrator.errors import SpecError
from orchestrator.results import ResultsStore
from orchestrator.run import LocalBackend, run_job
from orchestrator.run.events import Checkpointed, Evaluated
from orchestrator.spec import build_job
from orchestrator.track import Tracker
from orchestrator.track.tensorboard import TensorBoardSink
from orchestrator.track.views import Point, TrialEnd, TrialView
from rnn.events import EvalRecord
from trackers import evals_by_trial, metric_history, mlflow_runs, same_series, tb_hparams, tb_scalars

pytestmark = pytest.mark.usefixtures("isolated_cache")

OLD_JOB = REPO / "tests" / "data" / "job_001d89b" / "old-train"


def _spec(tmp_path: Path, name: str = "tracked", **tracking: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name=name, output=str(tmp_path / "results"))
    if tracking:
        spec["tracking"] = tracking
    return spec


# --- the spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.org/path", "sqlite:///mlflow.db",
                                 "postgresql+psycopg2://u:p@db/mlflow"])
def test_tracking_accepts_mlflow_uris_of_a_server_or_a_database(tmp_path: Path, uri: str) -> None:
    job = build_job(_spec(tmp_path, mlflow=uri))
    assert job.spec.tracking is not None and job.spec.tracking.mlflow == uri


@pytest.mark.parametrize(("uri", "says"), [
    ("file:///tmp/mlruns", "MLflow 3 refuses a plain folder"),
    ("mlruns", "should be an MLflow tracking URI"),
    ("sqlite://", "sqlite:///relative/path.db"),
    ("sqlite:////no/such/folder/mlflow.db", "/no/such/folder, does not exist"),
    ("ftp://host/x", "should be a URI of one of"),
    ("http://", "should be http://host[:port][/path]"),
])
def test_tracking_refuses_a_malformed_mlflow_uri_naming_the_field(tmp_path: Path, uri: str, says: str) -> None:
    with pytest.raises(SpecError) as e:
        build_job(_spec(tmp_path, mlflow=uri), source="t.yaml")
    lines = e.value.lines("t.yaml")
    assert len(lines) == 1 and lines[0].startswith("t.yaml: tracking.mlflow: ") and says in lines[0], lines


def test_a_tracker_that_is_not_installed_is_refused_with_the_line_that_installs_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.spec.tracking._missing", lambda module: module == "tensorboard")
    with pytest.raises(SpecError) as e:
        build_job(_spec(tmp_path, tensorboard=True), source="t.yaml")
    assert e.value.lines("t.yaml") == [
        "t.yaml: tracking.tensorboard: needs the tensorboard package: pip install 'rnn-orchestrator[tracking]' "
        "(or: pip install tensorboard mlflow) (got true)"]


def test_tracking_is_not_part_of_a_trial_and_cannot_be_swept(tmp_path: Path) -> None:
    plain = build_job(_spec(tmp_path))
    tracked = build_job(_spec(tmp_path, tensorboard=True, mlflow="sqlite:///x.db"))
    assert [t.trial_id for t in plain.trials] == [t.trial_id for t in tracked.trials]
    spec = _spec(tmp_path)
    spec["sweep"]["grid"]["tracking.tensorboard"] = [True, False]
    with pytest.raises(SpecError, match="tracking apply to the whole job"):
        build_job(spec)


# --- TensorBoard, and when a point is safe to write -----------------------------------------------


def test_tensorboard_writes_each_step_once_when_a_trial_is_reopened(tmp_path: Path) -> None:
    view = TrialView("t1", {"model.cell": "lstm", "train.lr": 0.01, "model.tie_weights": False}, {})
    first = TensorBoardSink(str(tmp_path))
    first.log(view, [Point(10, {"val_loss": 3.0}, 1000.0), Point(20, {"val_loss": 2.5}, 1001.0)])
    first.end(view, None)  # paused at a rung: the file is closed, the trial not ended
    again = TensorBoardSink(str(tmp_path))  # a resumed driver: it knows the folder only from its files
    again.log(view, [Point(10, {"val_loss": 9.0}, 0.0), Point(20, {"val_loss": 9.0}, 0.0),
                     Point(30, {"val_loss": 2.0}, 1002.0)])
    again.end(view, TrialEnd("completed", 30, {"best_val_loss": 2.0}))
    again.end(view, TrialEnd("completed", 30, {"best_val_loss": 2.0}))  # told twice: written once
    again.close()
    assert tb_scalars(tmp_path / "t1") == [(10, 3.0), (20, 2.5), (30, 2.0)]
    assert tb_scalars(tmp_path / "t1", "best_val_loss") == [(30, 2.0)]
    hp = tb_hparams(tmp_path / "t1")
    assert hp["starts"] == 1 and hp["start"] == {"model.cell": "lstm", "train.lr": 0.01, "model.tie_weights": False}
    assert hp["ends"] == [1]  # one session end: STATUS_SUCCESS
    assert len(list((tmp_path / "t1").iterdir())) == 2  # the second sink's own file beside the first


def test_tensorboard_records_are_framed_byte_for_byte_as_tensorboards_own_writer_frames_them(tmp_path: Path) -> None:
    import io

    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
    from tensorboard.summary.writer.record_writer import RecordWriter

    sink = TensorBoardSink(str(tmp_path))
    for data in (b"", b"x", bytes(range(256)) * 40):
        theirs = io.BytesIO()
        RecordWriter(theirs).write(data)
        assert sink._record(data) == theirs.getvalue()
        assert sink._crc(data) == masked_crc32c(data)  # google-crc32c's C code, TensorBoard's answer


def _record(step: int, val: float) -> EvalRecord:
    return EvalRecord(step=step, epoch=0.1, train_loss=val + 0.1, val_loss=val, val_bpc=val * 1.44,
                      val_perplexity=2.0, val_accuracy=0.3, lr=1e-3, grad_norm=1.0, samples_per_s=100.0,
                      tokens_per_s=1600.0, elapsed_s=1.0)


def test_an_evaluation_is_written_once_a_checkpoint_covers_it_so_a_retry_replaces_it(tmp_path: Path) -> None:
    trial = build_job(_spec(tmp_path)).trials[0]
    tracker = Tracker([functools.partial(TensorBoardSink, str(tmp_path / "tb"))])
    tracker.on_event(trial, Evaluated(_record(10, 3.0)))
    tracker.on_event(trial, Checkpointed(10, b""))  # step 10 can no longer be redone
    tracker.on_event(trial, Evaluated(_record(20, 2.9)))  # no better: no checkpoint; then the worker is lost
    tracker.on_event(trial, Evaluated(_record(20, 2.8)))  # the retry, from step 10, evaluates step 20 again
    tracker.on_event(trial, Checkpointed(20, b""))
    tracker.on_event(trial, Evaluated(_record(30, 2.85)))  # not covered by a checkpoint yet
    assert tracker.close()
    assert tb_scalars(tmp_path / "tb" / trial.trial_id) == [(10, 3.0), (20, pytest.approx(2.8))]
    assert tb_hparams(tmp_path / "tb" / trial.trial_id)["start"]["model.cell"] == "lstm"


def test_a_tracker_that_fails_warns_once_and_the_others_go_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trial = build_job(_spec(tmp_path)).trials[0]
    (tmp_path / "blocked").write_text("a file where the folder would go")
    tracker = Tracker([functools.partial(TensorBoardSink, str(tmp_path / "blocked")),
                       functools.partial(TensorBoardSink, str(tmp_path / "fine"))])
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        for step in (10, 20, 30):
            tracker.on_event(trial, Evaluated(_record(step, 3.0 - step / 100)))
            tracker.on_event(trial, Checkpointed(step, b""))
        assert tracker.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("tracking: tensorboard failed"), warnings
    assert tracker.failed == ["tensorboard"]
    assert [s for s, _ in tb_scalars(tmp_path / "fine" / trial.trial_id)] == [10, 20, 30]


def test_the_sinks_are_written_by_a_process_of_their_own_not_the_driver(tmp_path: Path) -> None:
    trial = build_job(_spec(tmp_path)).trials[0]
    tracker = Tracker([functools.partial(TensorBoardSink, str(tmp_path / "tb"))])
    tracker.on_event(trial, Evaluated(_record(10, 3.0)))
    tracker.on_event(trial, Checkpointed(10, b""))
    assert tracker.close()
    (name,) = [p.name for p in (tmp_path / "tb" / trial.trial_id).iterdir()]
    assert tracker.pid is not None and tracker.pid != os.getpid()
    assert name.endswith(f".{tracker.pid}")  # the event file is named by the process that wrote it
    assert tracker.cpu_s is not None and tracker.cpu_s > 0  # what it cost, counted apart from the driver


def test_a_trackers_process_killed_mid_run_costs_one_warning_and_the_driver_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trial = build_job(_spec(tmp_path)).trials[0]
    tracker = Tracker([functools.partial(TensorBoardSink, str(tmp_path / "tb"))])
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        tracker.on_event(trial, Evaluated(_record(10, 3.0)))
        tracker.on_event(trial, Checkpointed(10, b""))
        time.sleep(0.5)
        assert tracker.pid is not None
        os.kill(tracker.pid, signal.SIGKILL)
        for step in (20, 30):  # told after it died: dropped, not an error
            tracker.on_event(trial, Evaluated(_record(step, 2.0)))
            tracker.on_event(trial, Checkpointed(step, b""))
        started = time.monotonic()
        assert tracker.close()
    assert time.monotonic() - started < 10
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("tracking: the trackers' process ended"), warnings
    assert "tensorboard off for the rest of this run" in warnings[0]
    assert tracker.failed == ["tensorboard"]


def _writer_children() -> list[int]:
    """This process's children that are trackers' processes (from /proc: they are reaped once ended)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and b"orchestrator.track.writer" in command:
            found.append(int(entry.name))
    return found


def test_a_tracker_started_before_its_sinks_writes_what_it_was_told_meanwhile(tmp_path: Path) -> None:
    """A driver starts the trackers' process before Ray, importing the sinks' libraries, and gives
    it the sinks once the job folder is locked; a module that cannot be imported is no error."""
    trial = build_job(_spec(tmp_path)).trials[0]
    tracker = Tracker(preload=["orchestrator.track.tensorboard", "tensorboard.compat.proto.event_pb2",
                               "no_such_module_for_the_trackers"])
    tracker.on_event(trial, Evaluated(_record(10, 3.0)))
    tracker.on_event(trial, Checkpointed(10, b""))
    tracker.open([functools.partial(TensorBoardSink, str(tmp_path / "tb"))])
    with pytest.raises(RuntimeError, match="already given"):
        tracker.open([functools.partial(TensorBoardSink, str(tmp_path / "tb2"))])
    tracker.on_event(trial, Evaluated(_record(20, 2.5)))
    tracker.on_event(trial, Checkpointed(20, b""))
    assert tracker.close() and tracker.close()  # closing twice: the same answer, nothing more
    assert tb_scalars(tmp_path / "tb" / trial.trial_id) == [(10, 3.0), (20, 2.5)]
    assert tracker.failed == []


def test_a_tracker_never_given_sinks_ends_its_process_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker = Tracker(preload=["mlflow"])  # an import of over a second: not waited for
    pid = tracker.pid
    assert pid is not None and _writer_children() == [pid]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        assert tracker.close()
    assert time.monotonic() - started < 1.0
    assert _writer_children() == []  # ended and reaped
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.slow
def test_mlflows_environment_is_set_before_the_trackers_process_imports_mlflow(tmp_path: Path) -> None:
    """MLflow starts its telemetry client when imported: the preload sets its switch first."""
    import subprocess
    import sys

    from orchestrator.spec.tracking import TrackingSpec
    from orchestrator.track import sink_modules
    from orchestrator.track.mlflow_sink import CLIENT_DEFAULTS
    from orchestrator.track.tracker import _child_env

    assert "mlflow" not in sink_modules(TrackingSpec(mlflow=f"sqlite:///{tmp_path / 'm.db'}"))  # not needed
    modules = sink_modules(TrackingSpec(mlflow="http://127.0.0.1:5000"))
    assert modules.index("orchestrator.track.mlflow_sink") < modules.index("mlflow")
    env = {k: v for k, v in _child_env().items() if k not in CLIENT_DEFAULTS}
    code = ("import importlib, os, sys\n"
            "for m in sys.argv[1:]: importlib.import_module(m)\n"
            "from mlflow.telemetry.utils import is_telemetry_disabled\n"
            "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], is_telemetry_disabled())")
    out = subprocess.run([sys.executable, "-c", code, *modules], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["true", "True"]


def test_a_trackers_process_whose_driver_goes_before_giving_sinks_exits_by_itself() -> None:
    """The end of its input before any sinks (a driver killed during Ray's start-up): it exits."""
    import pickle
    import subprocess
    import sys

    from orchestrator.track.tracker import _child_env

    replies_r, replies_w = os.pipe()
    process = subprocess.Popen([sys.executable, "-m", "orchestrator.track.writer", str(replies_w)],
                               stdin=subprocess.PIPE, pass_fds=(replies_w,), env=_child_env())
    os.close(replies_w)
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    with os.fdopen(replies_r, "rb") as replies:
        assert pickle.load(replies)[0] == "closed"


def test_a_run_refused_at_its_data_check_leaves_no_trackers_process(tmp_path: Path) -> None:
    from orchestrator.errors import UsageError

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question. " * 50)
    spec = _spec(tmp_path, tensorboard=True)
    spec["data"] = {**spec["data"], "corpus": str(corpus)}
    job = build_job(spec)
    corpus.write_bytes(b"")  # emptied after the spec was checked: the run's data check refuses it
    with pytest.raises(UsageError, match="empty"):
        run_job(job, backend=LocalBackend())
    assert _writer_children() == []
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_trackers_quiet_for_longer_than_the_close_timeout_still_finish_at_the_close(tmp_path: Path) -> None:
    tracker = Tracker([functools.partial(TensorBoardSink, str(tmp_path / "tb"))])
    time.sleep(3.0)  # a sweep with nothing to track for a while: the trackers' process says nothing
    assert tracker.pid is not None
    os.kill(tracker.pid, signal.SIGSTOP)  # its last writes take 1.5 s (a report's artifacts to a server)
    threading.Timer(1.5, os.kill, (tracker.pid, signal.SIGCONT)).start()
    assert tracker.close(timeout=2.0)  # the wait for progress starts at the close, not at its last answer


@pytest.mark.slow
def test_a_hung_trackers_process_is_given_up_after_the_timeout_and_ended(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trial = build_job(_spec(tmp_path)).trials[0]
    tracker = Tracker([functools.partial(TensorBoardSink, str(tmp_path / "tb"))])
    tracker.on_event(trial, Evaluated(_record(10, 3.0)))
    assert tracker.pid is not None
    pid = tracker.pid
    os.kill(pid, signal.SIGSTOP)  # as a sink stuck in a call that never returns
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        tracker.on_event(trial, Checkpointed(10, b""))
        assert not tracker.close(timeout=2.0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "the trackers wrote nothing for" in warnings[0], warnings
    with pytest.raises(ProcessLookupError):  # ended and reaped, not left behind
        os.kill(pid, 0)


# --- MLflow: a database written directly reads back as MLflow's client writes it ----------------


def _mlflow_story(tmp_path: Path, direct: bool) -> str:
    """Two drivers, one after the other, tell an MLflow sink about four trials: finished, paused then
    promoted, failed then run again, and one with 150 params. Returns the database's URI."""
    from orchestrator.track.mlflow_sink import MlflowSink

    uri, state = f"sqlite:///{tmp_path / 'mlflow.db'}", {}

    def sink() -> MlflowSink:
        return MlflowSink(uri, "story", "story", "results/story", (lambda: state.get("t"), lambda t: state.update(t=t)),
                          artifact_max_mb=1.0, direct=direct)

    def view(tid: str, n: int = 3) -> TrialView:
        return TrialView(tid, {"model.cell": "lstm", "train.lr": 0.01, "x.none": None,
                               **{f"p.{i:03d}": i for i in range(n)}}, {"train.lr": "0.01"})

    def pts(*steps: int, val: float = 2.0) -> list[Point]:
        return [Point(s, {"val_loss": val - s / 100, "train_loss": val, "lr": 1e-3}, 1000.0 + s) for s in steps]

    first = sink()
    first.log(view("done"), pts(10, 20))
    first.log(view("done"), [Point(30, {"val_loss": float("nan"), "grad_norm": float("inf")}, 1030.0)])
    first.end(view("done"), TrialEnd("completed", 20, {"best_val_loss": 1.8}, lambda: b"weights"))
    first.flush()  # what follows lands in a second flush, onto runs already written
    first.log(view("asha"), pts(10))
    first.end(view("asha"), None)  # paused at a rung
    first.log(view("crash"), pts(10))
    first.end(view("crash"), TrialEnd("failed", 10, {}))
    first.log(view("big", 150), pts(*range(10, 60, 10)))
    first.end(view("big", 150), TrialEnd("completed", 50, {"best_val_loss": 1.5}, lambda: b"x" * 2_000_000))
    first.flush()
    first.close()

    again = sink()  # a resumed driver: the same runs, each step once
    assert again.holds("done", "completed") and not again.holds("asha", "completed")
    again.log(view("done"), pts(10, 20))  # all held: nothing written
    again.log(view("asha"), pts(10, 20, val=1.0))  # step 10 held, step 20 new
    again.end(view("asha"), TrialEnd("completed", 20, {"best_val_loss": 0.8}))
    again.log(view("crash"), pts(10, 20))  # run again after a failure: the run goes on
    again.end(view("crash"), TrialEnd("completed", 20, {"best_val_loss": 1.7}))
    report = tmp_path / "report.md"
    report.write_text("# story\n")
    again.finish([report, tmp_path / "absent.html"])
    again.close()
    return uri


def _mlflow_contents(uri: str) -> dict[str, Any]:
    client, trials, job_run = mlflow_runs(uri, "story")
    report = [(a.path, a.file_size) for a in client.list_artifacts(job_run.info.run_id, "report")]
    out: dict[str, Any] = {"job": (job_run.info.status, job_run.data.tags.get("rnn.role"), report)}
    for tid, run in trials.items():
        assert run.data.tags.pop("mlflow.parentRunId") == job_run.info.run_id
        assert run.info.start_time and (run.info.end_time is not None) == (run.info.status != "RUNNING")
        history = {k: [(m.step, repr(m.value), m.timestamp if m.timestamp < 2_000_000 else None)
                       for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
                   for k in run.data.metrics}
        artifacts = {a.path: a.file_size for a in client.list_artifacts(run.info.run_id, "checkpoint")}
        out[tid] = (run.info.run_name, run.info.status, run.info.lifecycle_stage, run.data.tags, run.data.params,
                    {k: repr(v) for k, v in run.data.metrics.items()}, history, artifacts)
    # what MLflow's searches read: the latest value of a metric, params, tags
    found = client.search_runs([job_run.info.experiment_id], "metrics.val_loss < 1.9 and params.`p.149` = '149' "
                               "and tags.status = 'completed'")
    out["search"] = [r.data.tags["trial_id"] for r in found]
    return out


@pytest.mark.slow
def test_mlflow_written_directly_to_its_database_reads_back_as_its_client_writes_it(tmp_path: Path) -> None:
    direct = _mlflow_contents(_mlflow_story(tmp_path / "direct", direct=True))
    client = _mlflow_contents(_mlflow_story(tmp_path / "client", direct=False))
    assert direct == client
    assert direct["done"][1] == "FINISHED" and direct["done"][3]["status"] == "completed"
    assert direct["done"][6]["val_loss"] == [(10, "1.9", 1_010_000), (20, "1.8", 1_020_000),
                                              (30, "nan", 1_030_000)]
    assert direct["done"][7] == {"checkpoint/best.pt": 7}
    assert direct["asha"][6]["val_loss"] == [(10, "1.9", 1_010_000), (20, "0.8", 1_020_000)]
    assert direct["crash"][1] == "FINISHED" and direct["big"][3]["checkpoint_artifact"].startswith("not logged: 2.0 MB")
    assert len(direct["big"][4]) == 153 and direct["big"][4]["x.none"] == "null"
    assert direct["search"] == ["big"] and direct["job"] == ("FINISHED", "job", [("report/report.md", 8)])


@pytest.mark.slow
def test_a_database_driver_with_named_parameters_is_written_alike(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The direct writes go through the driver's executemany, in its paramstyle: SQLite's default is
    positional (qmark); PostgreSQL's drivers and others name their parameters."""
    import sqlalchemy

    positional = _mlflow_contents(_mlflow_story(tmp_path / "qmark", direct=True))
    monkeypatch.setattr(sqlalchemy, "create_engine", functools.partial(sqlalchemy.create_engine, paramstyle="named"))
    assert _mlflow_contents(_mlflow_story(tmp_path / "named", direct=True)) == positional


@pytest.mark.slow
def test_a_database_at_the_installed_mlflows_schema_is_written_without_importing_mlflow(tmp_path: Path) -> None:
    """MLflow's import is most of what tracking costs a sweep's trackers: a database MLflow has made
    is read and written with SQLAlchemy alone, and reads back with MLflow's client."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # makes the database
    code = ("import sys\n"
            "from orchestrator.track.mlflow_sink import MlflowSink\n"
            "from orchestrator.track.views import Point, TrialEnd, TrialView\n"
            "state = {}\n"
            "for n in range(2):  # a driver, then a resumed one\n"
            "    sink = MlflowSink(sys.argv[1], 'lean', 'lean', 'results/lean', (lambda: state.get('t'),\n"
            "                      lambda t: state.update(t=t)), artifact_max_mb=1.0)\n"
            "    view = TrialView('t1', {'train.lr': 0.01}, {'train.lr': '0.01'})\n"
            "    sink.log(view, [Point(s, {'val_loss': 2.0 - s / 100}, 1000.0 + s) for s in (10, 20 + 10 * n)])\n"
            "    sink.end(view, TrialEnd('completed', 20, {'best_val_loss': 1.8}, lambda: b'weights'))\n"
            "    sink.finish([])\n"
            "    sink.close()\n"
            "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('mlflow', 'alembic')))\n")
    out = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == ["[]"], out.stderr
    client, trials, job_run = mlflow_runs(uri, "lean")
    assert list(trials) == ["t1"] and job_run.info.status == "FINISHED"
    run = trials["t1"]
    assert run.info.status == "FINISHED" and run.data.params == {"train.lr": "0.01"}
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")] == [
        (10, 1.9), (20, 1.8), (30, 1.7)]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/best.pt"]


@pytest.mark.slow
def test_a_database_of_an_older_mlflow_schema_is_refused_with_mlflows_advice(tmp_path: Path) -> None:
    import sqlalchemy as sa
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.db.utils import _get_latest_schema_revision

    from orchestrator.track.mlflow_db import DbStore, schema_head

    assert schema_head() == _get_latest_schema_revision()  # read from the migrations' files, as alembic does
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    with sa.create_engine(uri).begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0584bdc529eb'"))
    # MLflow's store says so in a new process; this one has its store for the URI already
    with pytest.raises((MlflowException, RuntimeError), match="mlflow db upgrade"):
        DbStore(uri)
    with sa.create_engine(uri).begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfacecafe'"))
    with pytest.raises((MlflowException, RuntimeError), match="newer MLflow|unknown"):
        DbStore(uri)


@pytest.mark.slow
def test_an_experiment_without_a_location_of_ours_is_made_by_mlflow_where_mlflow_puts_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A database that is not a SQLite file has no folder beside it: MLflow's default applies."""
    from orchestrator.track.mlflow_db import DbStore

    monkeypatch.chdir(tmp_path)
    store = DbStore(f"sqlite:///{tmp_path / 'mlflow.db'}")
    store.create_experiment("defaults", None)
    made = store.experiment("defaults")
    assert made is not None and not made.deleted
    assert made.artifact_location.rstrip("/").endswith(f"mlruns/{made.experiment_id}")
    store.close()


@pytest.mark.parametrize("location", ["file:///data/mlartifacts/3", "file:///data/mlartifacts/3/", "s3://bucket/x/3",
                                      "mlflow-artifacts:/3", "/plain/path/3", "relative/3",
                                      "s3://bucket/x/3?versionId=1"])
def test_a_runs_artifact_uri_is_made_as_mlflow_makes_it(location: str) -> None:
    from mlflow.utils.uri import append_to_uri_path

    from orchestrator.track.mlflow_store import append_uri

    assert append_uri(location, "abc123", "artifacts") == append_to_uri_path(location, "abc123", "artifacts")


# --- a tracked sweep, end to end on the real trainer and the job folder ---------------------------


@pytest.mark.slow
def test_a_tracked_sweep_writes_tensorboard_and_mlflow_as_evals_parquet_and_a_rerun_adds_nothing(
        tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = build_job(_spec(tmp_path, tensorboard=True, mlflow=uri))
    assert run_job(job, backend=LocalBackend()).exit_code == 0
    folder = tmp_path / "results" / "tracked"
    want = evals_by_trial(folder)
    assert len(want) == 4
    files = {}
    for tid, series in want.items():
        assert same_series(tb_scalars(folder / "tensorboard" / tid), series), tid
        hp = tb_hparams(folder / "tensorboard" / tid)
        assert hp["starts"] == 1 and hp["ends"] == [1] and hp["start"]["data.seq_len"] == 16
        files[tid] = sorted(p.name for p in (folder / "tensorboard" / tid).iterdir())
    client, trials, job_run = mlflow_runs(uri, "tracked")
    assert set(trials) == set(want)
    for tid, run in trials.items():
        assert run.info.run_name == tid and run.info.status == "FINISHED"
        assert run.data.tags["status"] == "completed" and run.data.tags["mlflow.parentRunId"] == job_run.info.run_id
        assert {"model.cell", "train.seed"} <= set(run.data.tags)  # the swept values
        assert run.data.params["model.hidden_size"] == "32" and run.data.params["train.lr"] == "0.002"
        assert same_series(metric_history(client, run), want[tid])
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/best.pt"]
    assert {a.path for a in client.list_artifacts(job_run.info.run_id, "report")} == {
        "report/report.md", "report/report.html"}

    assert run_job(job, backend=LocalBackend()).exit_code == 0  # all finished: the trackers get nothing new
    client, again, _ = mlflow_runs(uri, "tracked")
    assert {t: r.info.run_id for t, r in again.items()} == {t: r.info.run_id for t, r in trials.items()}
    for tid, run in again.items():
        assert same_series(metric_history(client, run), want[tid])
        assert sorted(p.name for p in (folder / "tensorboard" / tid).iterdir()) == files[tid]


@pytest.mark.slow
def test_a_tensorboard_folder_that_cannot_be_written_warns_once_and_the_sweep_succeeds(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "results" / "blocked"
    folder.mkdir(parents=True)
    (folder / "tensorboard").write_text("not a folder")
    job = build_job(_spec(tmp_path, "blocked", tensorboard=True))
    with caplog.at_level(logging.WARNING, logger="orchestrator"):
        assert run_job(job, backend=LocalBackend()).exit_code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "tracking" in r.getMessage()]
    assert len(warnings) == 1 and "tensorboard failed" in warnings[0], warnings
    assert len(evals_by_trial(folder)) == 4


# --- export ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_writes_an_old_job_folder_once_however_often_it_runs(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "old-train"
    shutil.copytree(OLD_JOB, folder)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for _ in range(2):
        assert main(["export", str(folder), "--tensorboard", "--mlflow", uri, "--experiment", "old"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"{folder}: 3 trials written to TensorBoard ({folder / 'tensorboard'}) and MLflow ({uri})")
    want = evals_by_trial(folder)  # the old folder's two compacted trials and one left as a part
    assert len(want) == 3
    client, trials, _ = mlflow_runs(uri, "old")
    assert set(trials) == set(want)
    for tid, series in want.items():
        assert same_series(tb_scalars(folder / "tensorboard" / tid), series)
        assert same_series(metric_history(client, trials[tid]), series)
        assert trials[tid].data.tags["model.cell"] in ("lstm", "gru")  # the swept value, found from the table


@pytest.mark.parametrize(("args", "says"), [
    (["--mlflow", "file:///x"], "--mlflow: should be an MLflow tracking URI"),
    ([], "say where to export: --tensorboard [LOGDIR] and/or --mlflow URI"),
])
def test_export_refuses_bad_input_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                             says: str) -> None:
    folder = tmp_path / "old-train"
    shutil.copytree(OLD_JOB, folder)
    assert main(["export", str(folder), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (folder / "tensorboard").exists() and not (folder / "tracking.json").exists()


def test_export_of_a_folder_that_is_not_a_job_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "--tensorboard"]) == 2
    assert "not a job folder" in capsys.readouterr().err


@pytest.mark.slow
def test_successive_halving_keeps_one_run_per_trial_across_pauses_and_promotions(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _spec(tmp_path, "asha", tensorboard=True, mlflow=uri)
    spec["train"].update(max_steps=40, eval_every=10)
    spec["sweep"] = {"grid": {"train.lr": [0.03, 0.01, 0.003, 0.0001]}, "seeds": [0],
                     "scheduler": {"type": "asha", "metric": "val_loss", "grace_steps": 10, "reduction_factor": 2}}
    assert run_job(build_job(spec), backend=LocalBackend(), live_report_s=0).exit_code == 0
    folder = tmp_path / "results" / "asha"
    rows = {r["trial_id"]: r["status"] for r in ResultsStore(str(folder)).read_trials().to_pylist()}
    assert {"completed", "pruned"} <= set(rows.values())
    client, trials, _ = mlflow_runs(uri, "asha")  # one run per trial, paused and promoted or not
    want = evals_by_trial(folder)
    assert set(trials) == set(rows) == set(want)
    for tid, series in want.items():
        assert same_series(metric_history(client, trials[tid]), series), tid
        assert same_series(tb_scalars(folder / "tensorboard" / tid), series), tid
        assert trials[tid].data.tags["status"] == rows[tid] and trials[tid].info.status == "FINISHED"


@pytest.mark.ray
def test_a_tracked_sweep_on_ray_writes_the_trackers_from_the_driver(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec_path = tmp_path / "ray.yaml"
    spec_path.write_text(json.dumps(_spec(tmp_path, "onray", tensorboard=True, mlflow=uri)))
    done = run_cli(["run", str(spec_path)], ray_env(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stdout + done.stderr
    folder = tmp_path / "results" / "onray"
    client, trials, _ = mlflow_runs(uri, "onray")
    want = evals_by_trial(folder)
    assert set(trials) == set(want) and len(want) == 4
    for tid, series in want.items():
        assert same_series(metric_history(client, trials[tid]), series), tid
        assert same_series(tb_scalars(folder / "tensorboard" / tid), series), tid
