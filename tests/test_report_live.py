"""A running sweep refreshes its report: run_job with a short live interval (on the local backend:
the live report is the runner's, whatever runs the trials)."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest

import orchestrator.report.render  # noqa: F401  (imported up front: the live thread's first build is quick)
from conftest import TINY_SPEC, write_spec
from orchestrator.run import LocalBackend, run_job
from orchestrator.spec import load_job


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_cache")
def test_a_running_sweep_rebuilds_its_report_as_trials_finish(tmp_path: Path) -> None:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(output=str(tmp_path / "results"))
    spec["sweep"]["grid"]["model.cell"] = ["lstm", "gru", "rnn"]  # 6 trials
    job = load_job(write_spec(tmp_path / "tiny.yaml", spec))
    report = tmp_path / "results" / "tiny" / "report.html"
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:  # what a user reloading the page mid-sweep would see
        while not done.wait(0.05):
            text = report.read_text(encoding="utf-8") if report.exists() else ""
            if "Live: the sweep is still running" in text and text not in seen:
                seen.append(text)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outcome = run_job(job, backend=LocalBackend(), live_report_s=0.2)
    finally:
        done.set()
        watcher.join()
    assert outcome.exit_code == 0
    assert seen, "no live report appeared while the sweep ran"
    assert "## Conclusion" not in seen[0] and "<h2>Conclusion</h2>" in seen[0]
    assert "generated when the sweep ends" in seen[0]
    final = report.read_text(encoding="utf-8")
    assert "Live:" not in final and "http-equiv" not in final
    assert "Trials: 6." in final and "Text sample from the best checkpoint" in final
