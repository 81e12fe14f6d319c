"""``best``: a job folder's best configuration as a spec that validates and names the same trial.

The job folders are real (parts, Parquet, manifest) but filled by ``commit_trial`` rather than
by training: what is under test is the ranking and the spec written out. The real-Ray ASHA test
(test_asha_ray.py) also runs ``best`` on a trained job.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import TINY_SPEC, run_cli, throughput_row
from orchestrator.cli import BEST_METRICS
from orchestrator.errors import UsageError
from orchestrator.report import best as best_module
from orchestrator.report.best import METRICS, best_spec
from orchestrator.results import ResultsStore, trial_row, write_manifest
from orchestrator.spec import build_job, trial_config
from rnn.events import TrialStatus
from rnn.throughput_row import ThroughputRow, ThroughputStatus, mark_best

T0 = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone.utc)


def _job_folder(tmp_path: Path, raw: dict[str, Any], outcomes: list[tuple[str, float, float]],
                config_json: bool = True) -> tuple[Path, list]:
    """Commit each trial of ``raw`` with (status, best_val_loss, best_val_accuracy); without
    ``config_json``, as a job folder written before that column existed (it is null)."""
    job = build_job(raw, source="spec.yaml")
    folder = tmp_path / raw["name"]
    store = ResultsStore(folder)
    for trial, (status, loss, acc) in zip(job.trials, outcomes, strict=True):
        info = {"best_val_loss": loss, "best_val_bpc": loss / 0.69, "best_val_accuracy": acc, "best_step": 20,
                "steps": 20}
        row = trial_row(trial, status=TrialStatus(status), info=info, started_at=T0, finished_at=T0)
        store.commit_trial(row if config_json else {**row, "config_json": None})
    write_manifest(folder, spec_text=yaml.safe_dump(raw, sort_keys=False), spec_path="spec.yaml")
    return folder, list(job.trials)


def _raw(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TINY_SPEC)
    raw.update(changes)
    raw["train"]["early_stopping"] = {"patience": 3, "min_delta": 0.001}
    return raw


def test_best_writes_the_best_trials_config_as_a_spec_that_validates(tmp_path: Path) -> None:
    folder, trials = _job_folder(tmp_path, _raw(), [("completed", 2.0, 0.30), ("completed", 1.5, 0.20),
                                                    ("failed", 0.1, 0.9), ("early_stopped", 1.7, 0.40)])
    text = best_spec(folder)
    assert f"trial {trials[1].trial_id} (completed): best_val_loss 1.5000 at step 20" in text
    spec = yaml.safe_load(text)
    assert spec["name"] == "tiny-best" and "sweep" not in spec and spec["resources"] == TINY_SPEC["resources"]
    again = build_job(spec, source="best.yaml")
    assert [t.trial_id for t in again.trials] == [trials[1].trial_id]  # exactly that trial's config
    # another metric, where higher is better
    by_acc = build_job(yaml.safe_load(best_spec(folder, metric="val_accuracy")))
    assert [t.trial_id for t in by_acc.trials] == [trials[3].trial_id]


def test_the_final_report_writes_best_yaml_and_links_it_a_live_one_does_not(tmp_path: Path) -> None:
    from orchestrator.report import build_report

    folder, trials = _job_folder(tmp_path, _raw(), [("completed", 2.0, 0.30), ("completed", 1.5, 0.20),
                                                    ("completed", 1.9, 0.4), ("completed", 1.7, 0.40)])
    _, live_html = build_report(folder, live=True)
    assert not (folder / "best.yaml").exists() and 'href="best.yaml"' not in live_html.read_text()
    md, html = build_report(folder)
    assert (folder / "best.yaml").read_text() == best_spec(folder)
    assert 'href="best.yaml"' in html.read_text() and "(<best.yaml>)" in md.read_text()
    spec = yaml.safe_load((folder / "best.yaml").read_text())
    assert [t.trial_id for t in build_job(spec).trials] == [trials[1].trial_id]
    # a run hands its own store over (the report and best.yaml read through it): the same best.yaml
    before = (folder / "best.yaml").read_bytes()
    (folder / "best.yaml").unlink()
    store = ResultsStore(folder)
    assert best_spec(store) == best_spec(folder) and build_report(store) == (md, html)
    assert (folder / "best.yaml").read_bytes() == before and "(<best.yaml>)" in md.read_text()


OUTCOMES = [("completed", 2.0, 0.3), ("completed", 1.0, 0.2), ("completed", 3.0, 0.1), ("completed", 4.0, 0.1)]


def _narrow(folder: Path) -> None:
    """The manifest's spec no longer expands to the best trial (the grid was narrowed)."""
    narrowed = _raw()
    narrowed["sweep"]["grid"]["model.cell"] = ["gru"]
    write_manifest(folder, spec_text=yaml.safe_dump(narrowed, sort_keys=False), spec_path="spec.yaml")


def test_best_reads_the_trials_stored_config_without_expanding_the_spec(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, trials = _job_folder(tmp_path, _raw(), OUTCOMES)
    row = next(r for r in ResultsStore(folder).read_trials().to_pylist() if r["trial_id"] == trials[1].trial_id)
    assert json.loads(row["config_json"]) == trial_config(trials[1])  # the resolved config, whole
    assert row["model.cell"] == trial_config(trials[1])["model"]["cell"]  # beside the dotted columns
    from_json = best_spec(folder)
    _narrow(folder)  # even a spec that no longer expands to the trial does not matter
    monkeypatch.setattr(best_module, "_trial_configs", lambda raw: pytest.fail("expanded the spec again"))
    assert best_spec(folder) == from_json
    assert [t.trial_id for t in build_job(yaml.safe_load(from_json)).trials] == [trials[1].trial_id]


def test_a_folder_without_stored_configs_expands_the_spec_again_to_the_same_bytes(tmp_path: Path) -> None:
    new, _ = _job_folder(tmp_path / "new", _raw(), OUTCOMES)
    old, _ = _job_folder(tmp_path / "old", _raw(), OUTCOMES, config_json=False)
    assert ResultsStore(old).read_trials()["config_json"].null_count == 4
    # the fallback writes what the stored config writes; output: where each job ran
    def rooted(folder: Path, name: str) -> str:
        return best_spec(folder).replace(str(tmp_path / name), "ROOT")

    assert rooted(old, "old") == rooted(new, "new")
    assert yaml.safe_load(best_spec(new))["output"] == str(tmp_path / "new")


def test_best_falls_back_to_the_tables_config_columns(tmp_path: Path) -> None:
    folder, trials = _job_folder(tmp_path, _raw(), OUTCOMES, config_json=False)
    _narrow(folder)  # no stored config, and the spec no longer expands to that trial
    spec = yaml.safe_load(best_spec(folder))
    assert [t.trial_id for t in build_job(spec).trials] == [trials[1].trial_id]


def test_best_of_a_throughput_job_is_the_fastest_setting_as_a_train_spec(tmp_path: Path) -> None:
    raw = copy.deepcopy(TINY_SPEC)
    raw.update(name="tp", kind="throughput", throughput={"batch_sizes": [8, 16, 32], "measure_steps": 2})
    job = build_job(raw)
    folder = tmp_path / "tp"
    store = ResultsStore(folder)

    def tp(batch: int, speed: float, status: ThroughputStatus = ThroughputStatus.OK) -> ThroughputRow:
        return throughput_row(batch, speed, status, device="cuda:0", device_name="NVIDIA H200", precision="bf16")

    speeds = [[(8, 100.0), (16, 150.0), (32, 0.0)], [(8, 120.0), (16, 400.0), (32, 0.0)],
              [(8, 90.0), (16, 95.0), (32, 99.0)], [(8, 1.0), (16, 2.0), (32, 3.0)]]
    for trial, sizes in zip(job.trials, speeds, strict=True):
        rows = [tp(b, s) if s else tp(b, s, ThroughputStatus.OOM) for b, s in sizes]
        store.commit_trial(trial_row(trial, status=TrialStatus.COMPLETED, started_at=T0, finished_at=T0),
                           throughput=mark_best(rows))
    write_manifest(folder, spec_text=yaml.safe_dump(raw, sort_keys=False), spec_path="tp.yaml")
    text = best_spec(folder)
    assert "batch size 16, 400 samples/s, bf16 on NVIDIA H200" in text
    spec = yaml.safe_load(text)
    assert spec["kind"] == "train" and "throughput" not in spec
    assert spec["train"]["batch_size"] == 16 and spec["train"]["amp"] == "bf16" and spec["train"]["device"] == "cuda"
    assert spec["model"]["cell"] == trial_config(job.trials[1])["model"]["cell"]
    assert len(build_job(spec).trials) == 1
    with pytest.raises(UsageError, match="--metric applies to train jobs"):
        best_spec(folder, metric="val_loss")
    # a folder written before config_json: the fastest trial's config from the spec, the same spec
    stripped = tmp_path / "tp-old"
    old = ResultsStore(stripped)
    for trial, sizes in zip(job.trials, speeds, strict=True):
        rows = [tp(b, s) if s else tp(b, s, ThroughputStatus.OOM) for b, s in sizes]
        old.commit_trial({**trial_row(trial, status=TrialStatus.COMPLETED, started_at=T0, finished_at=T0),
                          "config_json": None}, throughput=mark_best(rows))
    write_manifest(stripped, spec_text=yaml.safe_dump(raw, sort_keys=False), spec_path="tp.yaml")
    assert best_spec(stripped) == text


@pytest.mark.slow
def test_best_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    assert tuple(METRICS) == BEST_METRICS
    folder, _ = _job_folder(tmp_path, _raw(), [("failed", 1.0, 0.1), ("diverged", 1.0, 0.1),
                                               ("oom", 1.0, 0.1), ("failed", 1.0, 0.1)])
    env: dict[str, str] = {}
    import os
    env.update(os.environ)
    for args, expected in [
        ([str(tmp_path / "nope")], "not a job folder"),
        ([str(folder)], "no completed trial with a finite best_val_loss to rank (1 diverged, 2 failed, 1 oom)"),
    ]:
        proc = run_cli(["best", *args], env)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and expected in proc.stderr
