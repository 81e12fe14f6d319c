"""``report.md`` and a self-contained ``report.html``, rebuilt from a job folder's files alone.

The report reads ``trials.parquet``, ``evals.parquet``, ``throughput.parquet``, the trial
parts not yet compacted into them, and ``manifest.json`` (each optional) through
:class:`~orchestrator.results.store.ResultsStore`; it never needs a trainer or Ray (torch only
for the text sample), so it can be rebuilt at any time, also while a job runs. When no run
holds the folder it compacts the parts first; while one does, it reads tables and parts as
they are and writes only the report.

Sections build one list of blocks (:mod:`~orchestrator.report.blocks`); this module renders
that list as Markdown and as HTML, so both always say the same thing; only the HTML carries the
plots, inlined as SVG.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from orchestrator.report import plots
from orchestrator.report.best import write_best_spec
from orchestrator.report.blocks import SCHEDULER_STATUSES, SEED, Block, Code, Figure, Heading, Link, Para, Table
from orchestrator.report.conclusion import best_configuration, best_trial_of, conclusion
from orchestrator.report.importance import at_common_step, importance_section
from orchestrator.report.rung_noise import rung_decisions
from orchestrator.report.sample import sample_section
from orchestrator.report.search import search_section
from orchestrator.report.sections import (
    LIVE_BANNER,
    RUNNING_HEADING,
    ended_banner,
    failures,
    header,
    job_kind,
    overview,
    provenance,
    running_section,
    throughput_section,
)
from orchestrator.report.stats import config_labels
from orchestrator.report.training import best_trials, by_config, curves, summarize
from orchestrator.results import (
    FAILURE_STATUSES,
    SUCCESS_STATUSES,
    TRIAL_FIXED,
    ResultsError,
    ResultsStore,
    compact_if_idle,
    read_manifest,
)
from orchestrator.results.ranking import rank_trials, ranking_metric, varying_columns

__all__ = ["LIVE_RELOAD_S", "build_report", "end_live_report", "md_escape", "to_html", "to_markdown"]

#: A live report asks the browser to reload it this often.
LIVE_RELOAD_S = 30


def build_report(job_dir: str | os.PathLike[str] | ResultsStore, *, live: bool = False,
                 running: Sequence[Any] = ()) -> tuple[Path, Path]:
    """Rebuild ``report.md`` and ``report.html`` in ``job_dir``; returns their paths.

    ``job_dir`` is the job folder, or a store open on it (the run's own, say), which the report
    and ``best.yaml`` then read through instead of opening the folder again.

    ``live``: a refresh while the sweep runs: a banner says so, the page reloads itself, and the
    text sample (a model load and generation on the driver) waits for the final report.
    ``running``: for a live report, what each running trial is doing (``orchestrator.run.board.RunningTrial``).
    Raises :class:`ResultsError` when the folder holds no results at all.
    """
    store = job_dir if isinstance(job_dir, ResultsStore) else ResultsStore(job_dir)
    if not live:
        compact_if_idle(store)
    trials = store.read_trials()
    throughput = store.read_throughput()
    manifest = read_manifest(store.job_dir)
    if trials.num_rows == 0 and throughput.num_rows == 0 and manifest is None:
        raise ResultsError(f"no results in {store.job_dir}: run the job first, or check the output/name")
    name = (manifest or {}).get("name") or Path(store.job_dir.rstrip("/")).name
    kind = job_kind(manifest, store.has_throughput())
    config_cols = [c for c in trials.column_names if c not in TRIAL_FIXED.names]
    rows = trials.to_pylist()
    # The best configuration as a runnable spec beside the report (not while the sweep runs: the
    # best so far would be a moving target, and a file that changes under a user misleads).
    best_file = None if live else write_best_spec(store)
    blocks = header(name, live=live, job_dir=store.job_dir)
    if live and running:
        blocks += running_section(running)
    if kind == "throughput":  # no validation metrics: only failures are worth listing
        label = config_labels(rows, varying_columns(rows, config_cols))
        blocks += overview(kind, rows) + failures(rows, label)
        if best_file:
            blocks += [Heading(2, "Fastest setting"),
                       Link("The fastest setting that fit, as a kind: train spec on that device:", best_file)]
    else:
        answer, evidence = _training(store, rows, config_cols, store.read_evals(), live, best_file)
        blocks += answer + overview(kind, rows) + evidence
    if throughput.num_rows:
        blocks += throughput_section(throughput.to_pylist(), [c for c in throughput.column_names if "." in c])
    blocks += provenance(rows, manifest)
    md_path = store.write_text("report.md", to_markdown(blocks))
    refresh = LIVE_RELOAD_S if live else None
    html_path = store.write_text("report.html", to_html(blocks, f"{name} report", refresh_s=refresh))
    return Path(md_path), Path(html_path)


def end_live_report(job_dir: str | os.PathLike[str] | ResultsStore) -> bool:
    """Turn a live report left in ``job_dir`` into a stopped one; True when a page was changed.

    The run calls this as its sweep ends, before the final report: that report takes seconds to
    minutes, and a run killed meanwhile (SIGKILL, the OOM killer) would otherwise leave a page that
    says the sweep is still running and reloads itself forever. Only the live parts change (the
    banner says the sweep stopped, the self-reload and the running trials go); nothing is read but
    the two pages, each rewritten atomically. Call it only while no sweep writes to the folder.
    """
    store = job_dir if isinstance(job_dir, ResultsStore) else ResultsStore(job_dir)
    banner = ended_banner(store.job_dir)
    changed = False
    md = store.read_text("report.md")
    if md is not None and LIVE_BANNER in md:
        store.write_text("report.md", _end_live_markdown(md, banner.text))
        changed = True
    page = store.read_text("report.html")
    if page is not None and LIVE_BANNER in page:
        store.write_text("report.html", _end_live_html(page, banner.text))
        changed = True
    return changed


def _end_live_markdown(text: str, banner: str) -> str:
    out: list[str] = []
    skipping = False
    for line in text.split("\n"):
        if line.startswith("## ") or line.startswith("# "):
            skipping = line == f"## {md_escape(RUNNING_HEADING)}"
        if skipping:
            continue
        out.append(f"**{md_escape(banner)}**" if line.startswith(f"**{md_escape(LIVE_BANNER)}") else line)
    return "\n".join(out)


def _end_live_html(text: str, banner: str) -> str:
    text = re.sub(r'<meta http-equiv="refresh" content="\d+">\n', "", text)
    # Block text is escaped, so no "</p>" or "<h" occurs inside a paragraph or a table cell.
    text = re.sub(rf'<p class="live">{re.escape(html.escape(LIVE_BANNER))}.*?</p>',
                  lambda _: f'<p class="live">{html.escape(banner)}</p>', text, count=1, flags=re.DOTALL)
    return re.sub(rf"<h2>{re.escape(html.escape(RUNNING_HEADING))}</h2>.*?(?=<h[12]>|</body>)", "", text,
                  count=1, flags=re.DOTALL)


def _importance(rows: list[dict], ranked: list, evals: list[dict], params: list[str], col: str, evals_col: str,
                stopped: int) -> list[Block]:
    """Importance over the counted trials' best metric; when the scheduler stopped some trials
    early, over every trial that did not fail, at the last step all of them reached."""
    if stopped:
        kept = [r for r in rows if r["status"] in SUCCESS_STATUSES or r["status"] in SCHEDULER_STATUSES]
        common, step = at_common_step(kept, evals, evals_col)
        if step is not None:
            note = (f"Successive halving stopped trials at different steps, so every trial that did not fail "
                    f"is compared here on {evals_col} at step {step}, the last evaluation all of them reached.")
            return importance_section(common, params, evals_col, note=note)
    return importance_section(ranked, params, col)


def _training(store: ResultsStore, rows: list[dict], config_cols: list[str], eval_table: pa.Table,
              live: bool, best_file: Optional[str]) -> tuple[list[Block], list[Block]]:
    """The answer (the conclusion and the best configuration), then the evidence: a search's
    history (a ``sweep.tpe`` job's), the curves, the statistics behind the conclusion, the
    parameters' importance, the best trials, a text sample and the failures."""
    search = search_section(store, rows)  # also before any trial has a row: the proposals so far
    if not rows:
        return [], search
    params = varying_columns(rows, [c for c in config_cols if c != SEED])
    label = config_labels(rows, params)
    metric = ranking_metric(rows)
    # Only the columns the plots and the common-step comparison read: as Python dicts the whole
    # table is most of the report's memory at 10,000 trials (100,000 evaluations).
    wanted = dict.fromkeys(["trial_id", "step", "train_loss", "val_loss", metric.evals_column])
    evals = eval_table.select(list(wanted)).to_pylist()
    col = metric.trials_column
    stats = summarize(rows, label, col)
    # One colour per configuration, in trial order, shared by every plot.
    colors = plots.config_colors([label[r["trial_id"]] for r in rows])
    failed = sum(1 for r in rows if r["status"] in FAILURE_STATUSES - SCHEDULER_STATUSES)
    stopped = sum(1 for r in rows if r["status"] in SCHEDULER_STATUSES)
    ranked = rank_trials(rows, metric)
    floors = [r["unigram_loss"] for r in rows if r.get("unigram_loss") is not None]
    answer = conclusion(stats, col, failed, stopped, unigram=min(floors) if floors else None)
    top = best_trial_of(stats[0], ranked, label) if stats and stats[0].n else None
    if top is not None:
        answer += best_configuration(stats[0], top, params, col, store.job_dir, best_file)
    blocks: list[Block] = [Para(metric.why), *search]
    statuses = {r["trial_id"]: r["status"] for r in rows}
    baseline = min(floors) if floors and metric.evals_column == "val_loss" else None
    blocks += curves(evals, label, metric.evals_column, colors, statuses, [s.name for s in stats], baseline)
    blocks += by_config(stats, col, colors)
    if stopped:
        blocks += rung_decisions(rows, evals, label, metric.evals_column)
    blocks += _importance(rows, ranked, evals, params, col, metric.evals_column, stopped)
    blocks += best_trials(ranked, params, col)
    if live:
        blocks += [Heading(2, "Text sample from the best checkpoint"),
                   Para("The text sample is generated when the sweep ends.")]
    else:
        blocks += sample_section(store, top)
    blocks += failures(rows, label)
    return answer, blocks


# --- rendering -------------------------------------------------------------------------------


# Characters Markdown (CommonMark + GitHub tables) may read as syntax anywhere in a line: code
# spans, emphasis, raw HTML and autolinks, entities, strikethrough, table cells, and a `]` that
# would close a link (`[x](y)`, `[x][y]`; a bracket elsewhere, as in a CI's [0.85, 1.35], is
# literal). `_` only at a word's edge (inside a word, as in best_val_loss, it is literal).
_MD_INLINE = re.compile(r"[\\`*<>&|~]|\](?=[(\[])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
# ...and at the start of a line: headings, block quotes, list items, setext underlines.
_MD_LEADING = re.compile(r"^(#|[-+=](?=\s|$))")
_MD_ORDERED = re.compile(r"^(\d+)([.)])(?=\s|$)")


def md_escape(text: str) -> str:
    """``text`` as literal Markdown on one line: newlines become spaces, syntax is backslash-escaped."""
    flat = " ".join(text.split())
    inline = _MD_INLINE.sub(lambda m: "\\" + m.group(0), flat)  # `>` is escaped here, wherever it is
    return _MD_ORDERED.sub(r"\1\\\2", _MD_LEADING.sub(r"\\\1", inline))


def to_markdown(blocks: Sequence[Block]) -> str:
    """Markdown with the same content as the HTML, minus the plots (it says where they are).

    Every block's text is plain text (names, paths and error messages come from users), so it
    is escaped here as :func:`to_html` escapes it for HTML.
    """
    e = md_escape
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {e(b.text)}")
            if b.level == 1:
                out.append("\n_Plots are in report.html (self-contained; open it in a browser)._")
        elif isinstance(b, Para):
            out.append(f"**{e(b.text)}**" if b.box else e(b.text))
        elif isinstance(b, Table):
            out.append("| " + " | ".join(e(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            out.extend("| " + " | ".join(e(c) for c in row) + " |" for row in b.rows)
        elif isinstance(b, Figure):
            out.append(f"_Plot: {e(b.caption)} (see report.html)._")
        elif isinstance(b, Link):
            out.append(f"{e(b.text)} [{e(b.href)}](<{b.href}>)")
        elif isinstance(b, Code):  # a fence longer than any backtick run inside keeps it literal
            fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", b.text)), default=0))
            out += [fence, b.text, fence]
        out.append("")
    return "\n".join(out)


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2} tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0} figcaption{font-size:.85em;color:#555} svg{max-width:100%;height:auto}
p.answer{background:#eef6ee;border-left:4px solid #3a7d44;padding:.6em .9em}
p.live{background:#fff6e0;border-left:4px solid #c88a00;padding:.6em .9em}
pre{background:#f6f6f6;border:1px solid #ddd;padding:.6em .9em;white-space:pre-wrap;font-size:.88em}
"""


def to_html(blocks: Sequence[Block], title: str, refresh_s: Optional[int] = None) -> str:
    """One self-contained page: inline CSS and SVG, nothing fetched from anywhere.

    ``refresh_s``: the page reloads itself this often (a live report; reloading reads the same file).
    """
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f'<p class="{e(b.box)}">{e(b.text)}</p>' if b.box else f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):  # the SVG is matplotlib's output, which escapes its own text
            body.append(f"<figure>{b.svg}<figcaption>{e(b.caption)}</figcaption></figure>")
        elif isinstance(b, Code):
            body.append(f"<pre>{e(b.text)}</pre>")
        elif isinstance(b, Link):
            body.append(f'<p>{e(b.text)} <a href="{e(b.href)}">{e(b.href)}</a></p>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        + (f'<meta http-equiv="refresh" content="{int(refresh_s)}">\n' if refresh_s else "")
        + f"<title>{e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )
