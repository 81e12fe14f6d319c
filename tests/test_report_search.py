"""The report's "Search history" for a ``sweep.tpe`` job: a real TPE job folder made by the runner
on the in-process backend (no Ray), its section read back from report.md; and the same folder
without ``search/``, live, or with a damaged record."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ExitCode
from orchestrator.report.blocks import Para, Table
from orchestrator.report.render import build_report
from orchestrator.report.search import outcomes, search_section
from orchestrator.results import ResultsStore
from orchestrator.results.proposals import ProposalRecord, read_proposals
from orchestrator.run import LocalBackend, run_job
from orchestrator.spec import build_job

#: Five proposals (two start-up draws) of a tiny char LSTM on the builtin corpus, 60 steps with a
#: successive-halving rung at 20, so some proposals are pruned and at least one runs to the end.
SPEC: dict[str, Any] = {
    "name": "tpe-report",
    "kind": "train",
    "data": {"corpus": "builtin", "level": "char", "seq_len": 16},
    "model": {"cell": "lstm", "embedding_dim": 16, "hidden_size": 16, "num_layers": 1, "dropout": 0.0},
    "train": {"batch_size": 8, "max_steps": 60, "eval_every": 20, "scheduler": "constant", "seed": 0,
              "device": "cpu"},
    "sweep": {
        "tpe": {"samples": 5, "seed": 0, "startup": 2,
                "space": {"train.lr": {"dist": "loguniform", "low": 1.0e-3, "high": 3.0e-2},
                          "model.hidden_size": {"dist": "choice", "values": [16, 32]}}},
        "seeds": [0],
        "scheduler": {"type": "asha", "metric": "val_loss", "grace_steps": 20, "reduction_factor": 3},
    },
    "resources": {"cpus_per_trial": 1, "max_concurrent": 1},
}


@pytest.fixture(scope="module")
def tpe_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TPE job folder, trained once for the module (private caches, no data folder)."""
    root = tmp_path_factory.mktemp("tpe")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RNN_CACHE_DIR", str(root / "cache"))
        mp.delenv("RNN_DATA_DIR", raising=False)
        outcome = run_job(build_job(SPEC), backend=LocalBackend(), output=str(root / "results"), live_report_s=0)
    assert outcome.exit_code == ExitCode.OK
    return Path(outcome.job_dir)


def _section(markdown: str) -> str:
    """The "Search history" section's Markdown, up to the next heading ("" when there is none)."""
    found = re.search(r"^## Search history\n(.*?)(?=^## )", markdown, re.S | re.M)
    return found.group(1) if found else ""


def _table(section: str) -> list[dict[str, str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    headers = [h.strip() for h in lines[0].strip("|").split("|")]
    return [dict(zip(headers, (c.strip() for c in ln.strip("|").split("|")), strict=True)) for ln in lines[2:]]


def _number(cell: str) -> float:
    return math.nan if cell == "—" else float(cell)


@pytest.mark.slow
def test_a_tpe_jobs_report_shows_each_proposal_its_origin_and_the_running_best(tpe_job: Path) -> None:
    md, html = build_report(tpe_job)
    section = _section(md.read_text(encoding="utf-8"))
    assert section, "no Search history section"
    records = read_proposals(ResultsStore(tpe_job))
    accepted = [r for r in records if r.accepted]
    table = _table(section)
    assert len(table) == len(accepted) >= 1
    # the origins as search/*.json recorded them, in the order proposed
    assert [row["origin"] for row in table] == ["TPE" if r.from_model else "start-up draw" for r in accepted]
    assert [row["proposal"] for row in table] == [str(k) for k in range(1, len(accepted) + 1)]
    # the running best is the lowest val_loss of the completed proposals so far, pruned ones left out
    best = math.inf
    for row in table:
        if row["status"] == "completed":
            best = min(best, _number(row["val_loss"]))
        if math.isfinite(best):
            assert _number(row["running best"]) == pytest.approx(best, abs=1e-4)  # the table's 4 decimals
        else:
            assert row["running best"] == "—"
    assert any(row["status"].startswith("pruned at step 20") for row in table)
    assert any(row["status"] == "completed" for row in table)
    startup = sum(1 for r in accepted if not r.from_model)
    assert f"the {startup} start-up draws" in section or "the 1 start-up draw" in section
    assert "Plot: val_loss by proposal" in section
    page = html.read_text(encoding="utf-8")
    assert "<h2>Search history</h2>" in page and "running best (completed only)" in page


@pytest.mark.slow
def test_a_job_without_a_search_has_no_search_history(tpe_job: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    shutil.copytree(tpe_job, plain)
    shutil.rmtree(plain / "search")
    md, html = build_report(plain)
    text = md.read_text(encoding="utf-8")
    assert "Search history" not in text and "Search history" not in html.read_text(encoding="utf-8")
    assert "## Validation curves" in text  # the rest of the report is as before


@pytest.mark.slow
def test_a_live_search_shows_paused_and_unfinished_proposals(tpe_job: Path) -> None:
    store = ResultsStore(tpe_job)
    records = [r for r in read_proposals(store) if r.accepted]
    rows = {r["trial_id"]: r for r in store.read_trials().to_pylist()}
    first, last = records[0].trial_ids[0], records[-1].trial_ids[0]
    rows[first] = {**rows[first], "status": "paused", "steps": 20}
    del rows[last]  # still running: no row yet
    blocks = search_section(store, list(rows.values()))
    table = next(b for b in blocks if isinstance(b, Table))
    statuses = [row[-3] for row in table.rows]
    assert statuses[0] == "paused at step 20" and statuses[-1] == "not finished"
    assert table.rows[-1][-2] == "—"  # no metric yet


def test_running_best_counts_only_proposals_whose_every_seed_ran_the_full_budget() -> None:
    def record(n: int, model: bool, *tids: str) -> ProposalRecord:
        return ProposalRecord(n, {}, {"train.lr": 0.01 * (n + 1)}, model, tids)

    def row(tid: str, status: str, loss: float, steps: int = 60) -> dict[str, Any]:
        return {"trial_id": tid, "status": status, "best_val_loss": loss, "steps": steps}

    records = [record(0, False, "a0", "a1"), record(1, False, "b0", "b1"),
               ProposalRecord(2, {}, {}, True, refused="model.x: bad"), record(3, True, "c0", "c1"),
               record(4, True, "d0", "d1")]
    rows = {r["trial_id"]: r for r in [row("a0", "completed", 3.0), row("a1", "completed", 3.2),
                                       row("b0", "pruned", 2.0, 20), row("b1", "completed", 2.5),
                                       row("c0", "completed", 2.9), row("c1", "early_stopped", 2.9, 40),
                                       row("d0", "failed", math.nan, 5)]}
    outs = outcomes(records, rows, "best_val_loss")
    assert [o.order for o in outs] == [1, 2, 3, 4]  # the refused proposal is not one
    assert [o.status for o in outs] == ["completed", "pruned at step 20 (1 of 2 seeds)",
                                        "early stopped at step 40 (1 of 2 seeds)", "failed (1 of 2 seeds)"]
    assert outs[0].value == pytest.approx(3.1) and outs[1].value == pytest.approx(2.25)
    assert [o.full_budget for o in outs] == [True, False, True, False]
    assert outs[0].running_best == pytest.approx(3.1) and outs[1].running_best == pytest.approx(3.1)
    assert outs[2].running_best == pytest.approx(2.9) and outs[3].running_best == pytest.approx(2.9)


@pytest.mark.slow
def test_a_damaged_search_record_costs_only_its_section(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "job")
    store.write_text("search/study.json", json.dumps({"sampler": "tpe", "metric": "val_loss"}) + "\n")
    store.write_text("search/000000.json", "{not json\n")
    blocks = search_section(store, [])
    assert len(blocks) == 2 and isinstance(blocks[1], Para) and "could not be read" in blocks[1].text
