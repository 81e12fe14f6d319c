"""The report: rebuilt from the Parquet files alone, self-contained HTML, the right numbers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import completed_row, eval_curve
from orchestrator.report.render import Heading, Para, Table, build_report, md_escape, to_markdown
from orchestrator.results import ResultsError, ResultsStore, write_manifest

# Per-seed best val loss. gru: mean 1.1, sd 0.1 -> 95% CI half-width 4.302653 * 0.1 / sqrt 3 = 0.2484.
# lstm - gru per seed: 0.10, 0.20, 0.15 -> mean +0.15, t = 0.15 / (0.05 / sqrt 3) = 5.196, p = 0.0351.
LOSSES = {"gru": [1.0, 1.1, 1.2], "lstm": [1.1, 1.3, 1.35], "rnn": [1.9]}
TRACEBACK = (
    'Traceback (most recent call last):\n  File "train.py", line 1\n'
    "RuntimeError: bad <script>alert(1)</script> state"
)


def _config(cell: str, seed: int, level: str = "char") -> dict:
    return {"data": {"level": level, "seq_len": 32}, "model": {"cell": cell, "hidden_size": 16},
            "train": {"lr": 0.002, "seed": seed}}


def _completed(store: ResultsStore, tid: str, loss: float, config: dict) -> None:
    store.commit_trial(completed_row(tid, loss, config, best_val_accuracy=0.55, params=4321, train_time_s=1.5,
                                     corpus_sha256="f00d" * 16), eval_curve(loss, train_gap=0.2))


@pytest.fixture
def train_job(tmp_path: Path) -> Path:
    job = tmp_path / "cells"
    store = ResultsStore(job)
    for cell, losses in LOSSES.items():
        for seed, loss in enumerate(losses):
            _completed(store, f"{cell}-{seed}", loss, _config(cell, seed))
    store.commit_trial({"trial_id": "rnn-1", "status": "diverged", "best_val_loss": float("nan"),
                        "error": "loss became NaN at step 12", "config": _config("rnn", 1)})
    store.commit_trial({"trial_id": "rnn-2", "status": "failed", "error": TRACEBACK, "attempts": 3,
                        "config": _config("rnn", 2)})
    write_manifest(job, "name: cells\nkind: train\n", "jobs/cells.yaml",
                   {"corpus_sha256": {"builtin": "f00d" * 16}, "devices": [{"type": "cpu"}]})
    return job


def _assert_self_contained(html: str) -> None:
    assert "<svg" in html
    assert not re.search(r"<script|<link|<iframe|<img|@import|\bsrc\s*=", html, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", html, re.I)
    hrefs = re.findall(r"href\s*=\s*['\"]([^'\"]*)['\"]", html)
    # Anchors, and links (never loads) to best.yaml, the one file written beside the report.
    assert all(h.startswith("#") or h == "best.yaml" for h in hrefs), hrefs
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html


def test_training_report(train_job: Path) -> None:
    md_path, html_path = build_report(train_job)
    assert (md_path, html_path) == (train_job / "report.md", train_job / "report.html")
    html, md = html_path.read_text(), md_path.read_text()
    _assert_self_contained(html)
    assert html.count("<svg") == 3  # validation curves, train/val panels, configuration CIs
    for text in (html, md):
        assert "Report: cells" in text and "Kind: train" in text
        assert "f00d" * 16 in text and "jobs/cells.yaml" in text
        # configurations are named by what varies (the cell), not by the seed
        assert "model.cell=gru" in text and "model.cell=lstm" in text and "train.seed=" not in text
        assert "± 0.2484 [0.8516, 1.3484]" in text  # gru: mean 1.1 ± t(0.975, 2) · 0.1 / √3
        assert "± 0.3286" in text  # lstm
        assert "n=1" in text  # rnn has one completed seed: no CI
        assert "Paired comparison" in text and "Best configuration: model.cell=gru" in text
        assert "+0.1500" in text and "5.196" in text and "0.0351" in text
        assert "no test: 1 shared seed(s)" in text  # rnn vs gru
        assert "loss became NaN at step 12" in text
    assert "RuntimeError: bad &lt;script&gt;alert(1)&lt;/script&gt; state" in html  # last traceback line, escaped
    assert "RuntimeError: bad \\<script\\>alert(1)\\</script\\> state" in md  # escaped, as in the HTML
    assert "<svg" not in md and "![" not in md and "see report.html" in md
    # best-trials table: gru-0 first, with its varying config value and metrics
    best_rows = [ln for ln in md.splitlines() if ln.startswith("| 1 |")]
    assert best_rows == ["| 1 | gru-0 | gru | 0 | 1.0000 | 1.4427 | 0.5500 | 4,321 | 40 | — | 1.5 |"]
    assert list(train_job.glob(".*.tmp")) == []


def test_report_compares_on_bpc_when_the_tokenization_varies(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    _completed(store, "c", 1.0, _config("gru", 0, level="char"))
    _completed(store, "b", 3.0, _config("gru", 0, level="bpe"))
    md = build_report(tmp_path)[0].read_text()
    assert "Compared on bits per character: data.level vary" in md
    assert "best_val_bpc by configuration" in md and "data.level=char" in md


@pytest.mark.parametrize("case", ["no_evals", "all_failed", "single_trial", "nan_metric", "manifest_only"])
def test_edge_cases_do_not_crash(tmp_path: Path, case: str) -> None:
    store = ResultsStore(tmp_path)
    if case == "no_evals":
        for tid, cell, loss in (("a", "gru", 1.0), ("b", "lstm", 2.0)):
            store.commit_trial({"trial_id": tid, "status": "completed", "best_val_loss": loss,
                                "config": _config(cell, 0)})
        expected = "No evaluations recorded yet."
    elif case == "all_failed":
        for seed in range(2):
            store.commit_trial({"trial_id": f"f{seed}", "status": "oom", "error": "",
                                "config": _config("gru", seed)})
        expected = "No completed trials yet."
    elif case == "single_trial":
        _completed(store, "only", 1.25, _config("gru", 0))
        expected = "| all trials | 1 | 1.2500 | n=1 |"
    elif case == "nan_metric":
        _completed(store, "a", float("nan"), _config("gru", 0))
        _completed(store, "b", 1.0, _config("gru", 1))
        store.commit_trial({"trial_id": "a", "status": "completed", "best_val_loss": float("nan"),
                            "config": _config("gru", 0)})  # committed again, without evaluations
        expected = "| all trials | 1 | 1.0000 | n=1 |"
    else:
        write_manifest(tmp_path, "kind: throughput\n", None)
        expected = "Kind: throughput"
    md_path, html_path = build_report(tmp_path)
    assert expected in md_path.read_text()
    assert html_path.read_text().startswith("<!DOCTYPE html>")


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="no results in"):
        build_report(tmp_path / "missing")


def test_throughput_report(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path)
    for cell, oom_at in (("lstm", 256), ("gru", None)):
        rows = []
        for bs in (32, 64, 128, 256):
            if bs == oom_at:
                rows.append({"batch_size": bs, "status": "oom", "device": "cuda", "device_name": "H100",
                             "error": "CUDA out of memory. Tried to allocate 4.00 GiB"})
            else:
                rows.append({"batch_size": bs, "status": "ok", "samples_per_s": 10.0 * bs ** 0.5,
                             "tokens_per_s": 320.0 * bs ** 0.5, "step_time_ms": 2.0, "step_time_ms_max": 3.0,
                             "peak_mem_mb": float(bs), "device": "cuda", "device_name": "H100",
                             "precision": "bf16", "torch_version": "2.13"})
        config = {"model": {"cell": cell}, "train": {"seed": 0}, "throughput": {"batch_sizes": [32, 64, 128, 256]}}
        best = max((r for r in rows if r["status"] == "ok"), key=lambda r: r["samples_per_s"])
        rows = [{**r, "is_best": r is best} for r in rows]  # as rnn.throughput.mark_best marks them
        store.commit_trial({"trial_id": f"tp-{cell}", "status": "completed", "config": config}, throughput=rows)
    md_path, html_path = build_report(tmp_path)
    html, md = html_path.read_text(), md_path.read_text()
    _assert_self_contained(html)
    assert "Kind: throughput" in md and "Throughput by batch size" in md
    assert "Validation curves" not in md  # a throughput job has no validation metrics
    assert "| model.cell=lstm @ H100 | — | 256 | OOM |" in md
    assert "CUDA out of memory. Tried to allocate 4.00 GiB" in md
    assert "| model.cell=lstm @ H100 | bf16 | 128 | ok | 113.1 |" in md and "★ best" in md
    svg = html[html.index("<svg"):]
    assert "OOM (out of memory)" in svg and "best batch size" in svg  # legend entries of the markers
    assert ">256<" in svg and ">32<" in svg  # measured batch sizes label the log2 axis


@pytest.mark.parametrize("text,expected", [
    ("a|b", "a\\|b"),
    ("`rm -rf`", "\\`rm -rf\\`"),
    ("<img src=x>", "\\<img src=x\\>"),
    ("# not a heading", "\\# not a heading"),
    ("line one\nline two\r\n", "line one line two"),
    ("*bold* _it_ ~~s~~ &amp;", "\\*bold\\* \\_it\\_ \\~\\~s\\~\\~ \\&amp;"),
    ("[x](javascript:alert(1))", "[x\\](javascript:alert(1))"),
    ("- item", "\\- item"),
    ("1. item", "1\\. item"),
    ("C:\\data\\x", "C:\\\\data\\\\x"),
    # what the report itself writes stays readable
    ("best_val_loss", "best_val_loss"),
    ("± 0.2484 [0.8516, 1.3484]", "± 0.2484 [0.8516, 1.3484]"),
    ("-0.5", "-0.5"),
    ("0.0042", "0.0042"),
])
def test_markdown_escaping(text: str, expected: str) -> None:
    assert md_escape(text) == expected


def test_user_strings_cannot_break_a_markdown_table() -> None:
    md = to_markdown([Heading(2, "# x"), Para("> quoted <b>"),
                      Table(["item", "value"], [["spec", "jobs/a|b`c`.yaml\n# title"]])])
    lines = md.splitlines()
    assert lines[0] == "## \\# x" and lines[2] == "\\> quoted \\<b\\>"
    row = next(ln for ln in lines if ln.startswith("| spec"))
    assert row == "| spec | jobs/a\\|b\\`c\\`.yaml # title |"  # mid-line, # is literal
    assert len(re.findall(r"(?<!\\)\|", row)) == 3  # two cells: the pipe in the path is escaped


def test_best_trials_give_training_tokens_per_second_without_the_evaluations() -> None:
    from orchestrator.report.training import best_trials, tokens_per_s

    row = {"trial_id": "t1", "steps": 40, "train.batch_size": 32, "data.seq_len": 100, "train_time_s": 30.0,
           "eval_time_s": 10.0, "best_val_loss": 2.0, "best_val_bpc": 2.9, "best_val_accuracy": 0.3, "params": 10}
    assert tokens_per_s(row) == pytest.approx(40 * 32 * 100 / 20.0)
    assert tokens_per_s({**row, "eval_time_s": float("nan")}) == pytest.approx(40 * 32 * 100 / 30.0)  # older rows
    assert tokens_per_s({**row, "data.seq_len": None}) is None and tokens_per_s({**row, "steps": 0}) is None
    table = best_trials([row], [], "val_loss")[1]
    assert isinstance(table, Table) and "tokens/s" in table.headers and "6,400" in table.rows[0]
