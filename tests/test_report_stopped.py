"""A run killed during its final report leaves no page that says the sweep is still running (issue 23).

The live report is rewritten, banner only, as the sweep ends and before the final report starts;
the final report then replaces it. The slow tests kill a real driver (``python -m orchestrator run
--local``, through the supervisor) at the moment its final report starts: SIGKILL of the driver,
and SIGTERM to the command as ``kill PID`` or ``ray job stop`` sends it.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO, TINY_SPEC, completed_row, eval_curve, write_spec
from orchestrator.report.render import build_report, end_live_report
from orchestrator.results import ResultsStore
from orchestrator.run.board import Board

LIVE = "Live: the sweep is still running"
STOPPED = "Stopped: the sweep is no longer running"


def _folder(tmp_path: Path) -> ResultsStore:
    store = ResultsStore(tmp_path / "job")
    for tid, loss, cell in (("a", 1.0, "gru"), ("b", 1.2, "lstm")):
        config = {"data": {"level": "char"}, "model": {"cell": cell}, "train": {"seed": 0}}
        store.commit_trial(completed_row(tid, loss, config), eval_curve(loss))
    return store


def test_a_live_page_is_turned_into_a_stopped_one_and_nothing_else_changes(tmp_path: Path) -> None:
    store = _folder(tmp_path)
    board = Board()
    board.update("c", "[3/3 c model.cell=rnn]", step=120, total=600, phase="training", train_loss=2.25)
    md, html = build_report(store, live=True, running=board.snapshot()[1])
    live_md, live_html = md.read_text(), html.read_text()
    assert LIVE in live_md and LIVE in live_html and "Running now" in live_md and "http-equiv" in live_html

    assert end_live_report(store) is True
    ended_md, ended_html = md.read_text(), html.read_text()
    for text in (ended_md, ended_html):
        assert LIVE not in text and "Running now" not in text and "[3/3 c model.cell=rnn]" not in text
        assert STOPPED in text and f"python -m orchestrator report {store.job_dir}" in text
    assert "http-equiv" not in ended_html  # it no longer reloads itself
    assert ended_html.count('<p class="live">') == 1 and ended_md.count(f"**{STOPPED}") == 1
    # everything but the live parts is as it was
    assert live_md.split("## Trials", 1)[1] == ended_md.split("## Trials", 1)[1]
    assert live_html.split("<h2>Trials</h2>", 1)[1] == ended_html.split("<h2>Trials</h2>", 1)[1]
    assert ended_html.rstrip().endswith("</html>")
    # a final page, or none, is left alone
    assert end_live_report(store) is False
    build_report(store)
    final = md.read_text()
    assert end_live_report(store) is False and md.read_text() == final
    assert end_live_report(ResultsStore(tmp_path / "empty")) is False


# A driver whose final report starts by being killed (``SIGKILL`` of itself) or by a SIGTERM to the
# command (to the supervisor, which forwards it, as ``kill PID`` does), with a live report rebuilt
# every 0.05 s while the sweep runs.
_DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    import orchestrator.report.render as render
    import orchestrator.run.live_report as live_report
    from orchestrator.cli import entry

    live_report.LIVE_REPORT_S = 0.05
    how = sys.argv[1]
    original = render.build_report

    def build_report(store, *, live=False, running=()):
        if not live:
            if how == "SIGKILL":
                os.kill(os.getpid(), signal.SIGKILL)
            os.kill(os.getppid(), signal.SIGTERM)  # the supervisor forwards it to this driver
            time.sleep(1.5)  # the signal arrives while the final report is being built
        return original(store, live=live, running=running)

    render.build_report = build_report
    sys.exit(entry(["run", "--local", sys.argv[2]]))
""")


def _run_killed(tmp_path: Path, how: str) -> tuple[subprocess.CompletedProcess, Path]:
    spec = copy.deepcopy(TINY_SPEC)
    spec.update(output=str(tmp_path / "results"))
    spec["train"].update(max_steps=10, eval_every=5)
    path = write_spec(tmp_path / "tiny.yaml", spec)
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RNN_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("RNN_ORCH_FAULTS", None)
    proc = subprocess.run([sys.executable, str(script), how, str(path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    return proc, tmp_path / "results" / "tiny"


@pytest.mark.slow
def test_a_sigkill_during_the_final_report_leaves_a_page_that_says_the_sweep_stopped(tmp_path: Path) -> None:
    proc, job = _run_killed(tmp_path, "SIGKILL")
    assert proc.returncode == 1, proc.stderr
    assert "killed by SIGKILL" in proc.stderr and "Traceback" not in proc.stderr
    for page in ("report.md", "report.html"):
        text = (job / page).read_text()
        assert LIVE not in text, page  # the live report had been written, and no longer says so
        assert STOPPED in text and "Trials: " in text, page
    assert "http-equiv" not in (job / "report.html").read_text()


@pytest.mark.slow
def test_a_sigterm_during_the_final_report_lets_it_finish(tmp_path: Path) -> None:
    proc, job = _run_killed(tmp_path, "SIGTERM")
    assert "SIGTERM received: the sweep has ended: finishing its report first" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.returncode in (0, 1), proc.stderr  # the sweep's own status: every trial had finished
    for page in ("report.md", "report.html"):
        text = (job / page).read_text()
        assert LIVE not in text and STOPPED not in text, page  # the final report, whole
        assert "Trials: 4." in text and "Text sample from the best checkpoint" in text, page
