"""The dispatch loop on real training, without Ray: :class:`orchestrator.run.LocalBackend`.

Retry from the driver's checkpoint, unfixable errors recorded, resume and widening, a killed or
stopped driver, successive halving and throughput recording, all end to end on the real trainer
and the real job folder. What only Ray does (placement, node loss, a hung worker process,
``ray job submit``) stays in the tests marked ``ray`` and ``cluster``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from conftest import REPO, TINY_SPEC, local_env, run_cli, sigkill_driver_when
from orchestrator.errors import ExitCode
from orchestrator.results import ResultsStore
from orchestrator.run import LocalBackend, run_job
from orchestrator.spec import build_job, trial_config

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _job(tmp_path: Path, name: str, **changes: Any) -> Any:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name=name, output=str(tmp_path / "results"))
    for section, values in changes.items():
        spec[section] = {**spec.get(section, {}), **values}
    return build_job(spec, source=f"<{name}>")


def _ids_by_cell_seed(job: Any) -> dict[tuple[str, int], str]:
    return {(trial_config(t)["model"]["cell"], trial_config(t)["train"]["seed"]): t.trial_id for t in job.trials}


@pytest.fixture(autouse=True)
def _no_injected_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller's ``RNN_ORCH_FAULTS`` would fail these runs on purpose."""
    monkeypatch.delenv("RNN_ORCH_FAULTS", raising=False)


@pytest.mark.slow
def test_quickstart_runs_on_the_local_backend_without_importing_ray(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from orchestrator.run import LocalBackend, run_job\n"
        "from orchestrator.spec import load_job\n"
        f"out = run_job(load_job('jobs/quickstart.yaml'), output={str(tmp_path)!r}, backend=LocalBackend())\n"
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))\n"
        "print('exit', int(out.exit_code))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=local_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "exit 0" in proc.stdout, proc.stdout + proc.stderr
    job = tmp_path / "quickstart"
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"completed"}
    assert all(r["steps"] == 300 and (job / r["checkpoint"]).is_file() for r in rows)
    assert (job / "report.html").is_file()


@pytest.mark.slow
def test_lost_worker_is_retried_and_unfixable_errors_are_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job = _job(tmp_path, "faults", train={"max_steps": 30})
    ids = _ids_by_cell_seed(job)
    lost, oom, nan, bug = ids[("lstm", 0)], ids[("lstm", 1)], ids[("gru", 0)], ids[("gru", 1)]
    faults = [
        # The worker dies after its first checkpoint (step 10), on the first attempt only.
        {"trial": lost, "kind": "exit", "at_step": 15, "attempts": [1]},
        {"trial": oom, "kind": "oom", "at_step": 5},
        {"trial": nan, "kind": "nan", "at_step": 12},
        {"trial": bug, "kind": "error", "at_step": 3},
    ]
    monkeypatch.setenv("RNN_ORCH_FAULTS", json.dumps(faults))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the workers make their scratch folders
    caplog.set_level(logging.INFO)
    outcome = run_job(job, backend=LocalBackend(), live_report_s=0)
    assert outcome.exit_code == ExitCode.FAILED  # a trial failed (a bug in trainer code)

    folder = tmp_path / "results" / "faults"
    rows = {r["trial_id"]: r for r in pq.read_table(folder / "trials.parquet").to_pylist()}
    assert len(rows) == 4
    # Lost worker: retried on a fresh worker from the driver's checkpoint, then completed.
    assert rows[lost]["status"] == "completed" and rows[lost]["attempts"] == 2 and rows[lost]["steps"] == 30
    assert "retrying (attempt 2) from checkpoint at step 10" in caplog.text
    assert "WorkerExit: injected exit at step 15" in caplog.text
    # Out of memory: recorded, not retried.
    assert rows[oom]["status"] == "oom" and rows[oom]["attempts"] == 1
    assert "OutOfMemoryError" in rows[oom]["error"]
    # NaN: the engine's divergence check says where.
    assert rows[nan]["status"] == "diverged" and "non-finite at step 13" in rows[nan]["error"]
    # An exception in trainer code: failed, with type, message and the worker's traceback.
    assert rows[bug]["status"] == "failed" and rows[bug]["attempts"] == 1
    assert rows[bug]["error"].startswith("RuntimeError: injected fault at step 3")
    assert "Traceback (most recent call last)" in rows[bug]["error"]
    evals = pq.read_table(folder / "evals.parquet").to_pylist()
    assert sorted(e["step"] for e in evals if e["trial_id"] == lost) == [10, 20, 30]  # no duplicates after retry
    assert "## Failures (3)" in (folder / "report.md").read_text()
    assert list(scratch.glob("rnn-trial-*")) == []  # every worker's scratch folder removed, the lost one's too


@pytest.mark.slow
def test_local_sweep_writes_results_then_resumes_and_widens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job = _job(tmp_path, "tiny")
    folder = tmp_path / "results" / "tiny"
    caplog.set_level(logging.INFO)
    assert run_job(job, backend=LocalBackend(), live_report_s=0).exit_code == ExitCode.OK
    assert "progress: 4/4 done, 0 running, 0 failed" in caplog.text

    trials = pq.read_table(folder / "trials.parquet").to_pylist()
    assert len(trials) == 4 and {t["status"] for t in trials} == {"completed"}
    assert sorted((t["model.cell"], t["train.seed"]) for t in trials) == [
        ("gru", 0), ("gru", 1), ("lstm", 0), ("lstm", 1)
    ]
    for t in trials:
        assert t["steps"] == 20 and t["best_val_loss"] > 0 and t["params"] > 0 and t["device"] == "cpu"
        assert t["checkpoint"] == f"checkpoints/{t['trial_id']}/best.pt"
        assert (folder / t["checkpoint"]).is_file()
    evals = pq.read_table(folder / "evals.parquet").to_pylist()
    assert len(evals) == 8 and sorted({e["step"] for e in evals}) == [10, 20]
    html = (folder / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html and "model.cell=gru" in html
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["name"] == "tiny" and len(manifest["corpus_sha256"]["builtin"]) == 64
    assert manifest["devices"] and manifest["devices"][0]["device"] == "cpu"
    assert manifest["runs"][-1]["finished_at"] and manifest["runs"][-1]["trials_run"] == 4
    finished_at = {t["trial_id"]: t["finished_at"] for t in trials}

    # The same job again: nothing reruns.
    caplog.clear()
    assert run_job(job, backend=LocalBackend(), live_report_s=0).exit_code == ExitCode.OK
    assert "all 4 trials are finished" in caplog.text and "started (attempt" not in caplog.text
    assert {t["trial_id"]: t["finished_at"] for t in pq.read_table(folder / "trials.parquet").to_pylist()} \
        == finished_at

    # A wider grid: only the new cells run.
    caplog.clear()
    wider = _job(tmp_path, "tiny", sweep={"grid": {"model.cell": ["lstm", "gru", "rnn"]}})
    assert run_job(wider, backend=LocalBackend(), live_report_s=0).exit_code == ExitCode.OK
    assert "skipping 4 finished trials" in caplog.text
    assert caplog.text.count("started (attempt 1)") == 2
    rows = pq.read_table(folder / "trials.parquet").to_pylist()
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert {r["trial_id"]: r["finished_at"] for r in rows if r["trial_id"] in finished_at} == finished_at
    assert len(pq.read_table(folder / "evals.parquet")) == 12
    assert len(json.loads((folder / "manifest.json").read_text())["runs"]) == 3


@pytest.mark.slow
def test_a_failed_trial_resumes_from_its_checkpoint_on_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    job = _job(tmp_path, "again", train={"max_steps": 30}, resources={"max_retries": 0},
               sweep={"grid": {"model.cell": ["lstm"]}, "seeds": [0]})
    (tid,) = [t.trial_id for t in job.trials]
    monkeypatch.setenv("RNN_ORCH_FAULTS", json.dumps([{"trial": tid, "kind": "exit", "at_step": 25}]))
    assert run_job(job, backend=LocalBackend(), live_report_s=0).exit_code == ExitCode.FAILED
    folder = tmp_path / "results" / "again"
    (row,) = pq.read_table(folder / "trials.parquet").to_pylist()
    assert row["status"] == "failed" and "gave up after 1 attempts" in row["error"] and row["steps"] == 20

    monkeypatch.delenv("RNN_ORCH_FAULTS")
    caplog.set_level(logging.INFO)
    assert run_job(job, backend=LocalBackend(), live_report_s=0).exit_code == ExitCode.OK
    assert "started (attempt 1) from checkpoint at step 20" in caplog.text  # not from scratch
    (row,) = pq.read_table(folder / "trials.parquet").to_pylist()
    assert row["status"] == "completed" and row["steps"] == 30
    steps = [e["step"] for e in pq.read_table(folder / "evals.parquet").to_pylist()]
    assert steps == [10, 20, 30]  # one row per (trial, step) across both runs


@pytest.mark.slow
def test_successive_halving_on_real_training_pauses_promotes_and_prunes(tmp_path: Path) -> None:
    job = _job(tmp_path, "asha", train={"max_steps": 40, "eval_every": 10},
               sweep={"grid": {"train.lr": [0.03, 0.01, 0.003, 0.0001]}, "seeds": [0],
                      "scheduler": {"type": "asha", "metric": "val_loss", "grace_steps": 10,
                                    "reduction_factor": 2}})
    assert run_job(job, backend=LocalBackend(), live_report_s=0).exit_code == ExitCode.OK
    folder = tmp_path / "results" / "asha"
    rows = pq.read_table(folder / "trials.parquet").to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"completed", "pruned"}
    completed = [r for r in rows if r["status"] == "completed"]
    assert completed and all(r["steps"] == 40 for r in completed)
    assert any(r["status"] == "pruned" and r["steps"] < 40 for r in rows)
    assert not list((folder / "checkpoints").glob("*/last.pt"))  # no resume point left behind
    evals = pq.read_table(folder / "evals.parquet").to_pylist()
    assert len({(e["trial_id"], e["step"]) for e in evals}) == len(evals)  # a promoted trial's curve is not doubled
    for r in completed:  # its whole curve, across its pauses
        assert sorted(e["step"] for e in evals if e["trial_id"] == r["trial_id"]) == [10, 20, 30, 40]


def test_throughput_trials_are_recorded_per_batch_size(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="speed", kind="throughput", output=str(tmp_path / "results"),
                throughput={"batch_sizes": [4, 8], "warmup_steps": 1, "measure_steps": 2})
    spec["sweep"] = {"grid": {"model.cell": ["lstm", "gru"]}}
    job = build_job(spec, source="<speed>")
    assert run_job(job, backend=LocalBackend(), live_report_s=0).exit_code == ExitCode.OK
    store = ResultsStore(tmp_path / "results" / "speed")
    assert {r["status"] for r in store.read_trials().to_pylist()} == {"completed"}
    rows = store.read_throughput().to_pylist()
    assert sorted((r["batch_size"], r["status"]) for r in rows) == [(4, "ok"), (4, "ok"), (8, "ok"), (8, "ok")]
    assert sum(r["is_best"] for r in rows) == 2  # one best batch size per trial


@pytest.mark.slow
def test_driver_sigkill_then_rerun_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="killme", output=str(tmp_path / "results"))
    spec_path = tmp_path / "killme.yaml"
    spec_path.write_text(json.dumps(spec))
    job = tmp_path / "results" / "killme"
    env = local_env(tmp_path)
    # A finished trial is a committed part first; compaction into trials.parquet comes at the end.
    sigkill_driver_when(spec_path, env, lambda: (job / "parts").is_dir()
                        and any(p.suffix == ".arrow" for p in (job / "parts").iterdir()), "trial finished",
                        args=["--local"])
    before = {r["trial_id"]: r for r in ResultsStore(job).read_trials().to_pylist()}  # tables + parts
    assert 1 <= len(before) < 4

    rerun = run_cli(["run", str(spec_path), "--local"], env)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"skipping {len(before)} finished trials" in rerun.stdout
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert len(rows) == 4 and len({r["trial_id"] for r in rows}) == 4
    assert {r["status"] for r in rows} == {"completed"}
    for r in rows:  # finished trials were not retrained
        if r["trial_id"] in before:
            assert r["finished_at"] == before[r["trial_id"]]["finished_at"]
    evals = pq.read_table(job / "evals.parquet").to_pylist()
    assert len(evals) == 4 * 2 and len({(e["trial_id"], e["step"]) for e in evals}) == 8


@pytest.mark.slow
def test_sigterm_stops_the_sweep_writes_what_finished_and_says_interrupted(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(name="term", output=str(tmp_path / "results"))
    spec["train"]["max_steps"] = 40
    spec_path = tmp_path / "term.yaml"
    spec_path.write_text(json.dumps(spec))
    job = tmp_path / "results" / "term"
    driver = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", str(spec_path), "--local"],
        cwd=REPO, env=local_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        assert driver.stdout is not None
        for line in driver.stdout:  # wait until the first trial has finished and the second runs
            if "progress: 1/4 done" in line:
                break
        driver.send_signal(signal.SIGTERM)
        out, _ = driver.communicate(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    assert driver.returncode == 130, out
    assert "SIGTERM received" in out and "interrupted" in out and "Traceback" not in out
    rows = pq.read_table(job / "trials.parquet").to_pylist()
    assert 1 <= len(rows) < 4 and {r["status"] for r in rows} == {"completed"}
    assert (job / "report.html").is_file()


def test_local_and_address_cannot_be_combined(tmp_path: Path) -> None:
    spec_path = tmp_path / "tiny.yaml"
    spec_path.write_text(json.dumps(dict(TINY_SPEC, output=str(tmp_path / "results"))))
    proc = run_cli(["run", str(spec_path), "--local", "--address", "127.0.0.1:1"], local_env(tmp_path))
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_20_mb_corpus_is_encoded_once_and_its_ids_shared_by_the_trials(
        tmp_path: Path, isolated_cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = tmp_path / "big.txt"
    line = "".join(f"{i}: the quick brown fox jumps over the lazy dog, and the dog sleeps on.\n" for i in range(100))
    corpus.write_text(line * (21_000_000 // len(line)), encoding="utf-8")  # generated, about 21 MB
    assert corpus.stat().st_size >= 20_000_000
    job = _job(tmp_path, "big", data={"corpus": str(corpus), "val_max_chars": 200_000},
               train={"max_steps": 10, "eval_every": 10})
    caplog.set_level(logging.INFO)
    assert run_job(job, output=str(tmp_path / "results"), backend=LocalBackend(), live_report_s=0).exit_code == 0
    ids = sorted((isolated_cache / "tokenizers").glob("ids-*.npy"))
    assert len(ids) == 2  # the training split's and the evaluated validation head's, written once
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("corpus big")]
    assert len(lines) == len(job.trials) == 4
    assert sum("ids from the cache" in m for m in lines) == 3  # only the first trial encoded
