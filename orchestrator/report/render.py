"""``report.md`` and a self-contained ``report.html``, rebuilt from a job folder's files alone.

The report reads ``trials.parquet``, ``evals.parquet``, ``throughput.parquet``, the trial
parts not yet compacted into them, and ``manifest.json`` (each optional) through
:class:`~orchestrator.results.store.ResultsStore`; it never needs a trainer, Ray or torch, so it
can be rebuilt at any time, also while a job runs. When no run holds the folder it compacts the
parts first; while one does, it reads tables and parts as they are and writes only the report.
Both formats come from one list of blocks (headings, paragraphs, tables, figures), so they
always say the same thing; only the HTML carries the plots, inlined as SVG.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from orchestrator.report import plots
from orchestrator.report.stats import config_label, mean_ci, paired_test, shared_seeds
from orchestrator.results import (
    FAILURE_STATUSES,
    SUCCESS_STATUSES,
    TRIAL_FIXED,
    ResultsError,
    ResultsStore,
    compact_if_idle,
    manifest_runs,
    read_manifest,
)
from orchestrator.results.ranking import rank_trials, ranking_metric, varying_columns

__all__ = ["build_report"]

SEED = "train.seed"
_TOP_N = 10
_REASON_CHARS = 200


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]


@dataclass(frozen=True)
class Figure:
    svg: str
    caption: str


Block = Union[Heading, Para, Table, Figure]


def build_report(job_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Rebuild ``report.md`` and ``report.html`` in ``job_dir``; returns their paths.

    Raises :class:`ResultsError` when the folder holds no results at all.
    """
    store = ResultsStore(job_dir)
    compact_if_idle(store)
    trials = store.read_trials()
    throughput = store.read_throughput()
    manifest = read_manifest(job_dir)
    if trials.num_rows == 0 and throughput.num_rows == 0 and manifest is None:
        raise ResultsError(f"no results in {store.job_dir}: run the job first, or check the output/name")
    name = (manifest or {}).get("name") or Path(store.job_dir.rstrip("/")).name
    kind = _kind(manifest, store.has_throughput())
    config_cols = [c for c in trials.column_names if c not in TRIAL_FIXED.names]
    rows = trials.to_pylist()
    blocks = _header(name, kind, rows, manifest)
    if kind == "throughput":  # no validation metrics: only failures are worth listing
        label = {r["trial_id"]: config_label(r, varying_columns(rows, config_cols)) for r in rows}
        blocks += _failures(rows, label)
    else:
        blocks += _training_sections(rows, config_cols, store.read_evals().to_pylist())
    if throughput.num_rows:
        blocks += _throughput_section(throughput.to_pylist(), [c for c in throughput.column_names if "." in c])
    md_path = store.write_text("report.md", to_markdown(blocks))
    html_path = store.write_text("report.html", to_html(blocks, f"{name} report"))
    return Path(md_path), Path(html_path)


# --- formatting ------------------------------------------------------------------------------


def _num(x: Any, fmt: str = ".4f") -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    if isinstance(x, bool):
        return str(x).lower()
    return format(x, fmt) if isinstance(x, (int, float)) else str(x)


def _reason(error: Optional[str]) -> str:
    """One line of an error: a traceback's last line (the exception), else the first line."""
    lines = [ln.strip() for ln in (error or "").strip().splitlines() if ln.strip()]
    if not lines:
        return "—"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 1] + "…"


def _mapping(value: Any) -> dict:
    """A manifest entry that should be a mapping, or {} (an edited manifest must not crash the report)."""
    return value if isinstance(value, dict) else {}


# --- sections --------------------------------------------------------------------------------


def _kind(manifest: Optional[dict], has_throughput: bool) -> str:
    """The job's kind: the manifest's, else the spec text's ``kind:`` line, else from the files."""
    m = manifest or {}
    found = re.search(r"^kind:\s*['\"]?(\w+)", str(m.get("spec_text") or ""), re.MULTILINE)
    return m.get("kind") or (found and found.group(1)) or ("throughput" if has_throughput else "train")


def _header(name: str, kind: str, rows: list[dict], manifest: Optional[dict]) -> list[Block]:
    counts = Counter(r["status"] for r in rows)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    blocks: list[Block] = [
        Heading(1, f"Report: {name}"),
        Para(f"Kind: {kind}. Trials: {len(rows)}. Generated {now} from the job folder's files."),
        Table(["status", "trials"], [[s, str(n)] for s, n in sorted(counts.items())]),
    ]
    m = manifest or {}
    info: list[tuple[str, Any]] = []
    if m:
        commit = m.get("git_commit")
        dirty = " (uncommitted changes)" if m.get("git_dirty") else ""
        info += [("created at", m.get("created_at")), ("spec", m.get("spec_path")),
                 ("git commit", f"{commit}{dirty}" if commit else "—")]
    # The trials table knows each corpus's hash even when the manifest was written before any ran.
    corpora = {str(r.get("data.corpus", "corpus")): r["corpus_sha256"] for r in rows if r["corpus_sha256"]}
    listed = m.get("corpus_sha256") or {}
    corpora.update(listed if isinstance(listed, dict) else {"corpus": listed})
    info += [(f"corpus sha256 ({c})", sha) for c, sha in corpora.items()]
    info += list(_mapping(m.get("versions")).items())
    host = _mapping(m.get("host"))
    if host:
        info.append(("host", f"{host.get('hostname')} ({host.get('platform')})"))
    devices = m.get("devices")
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        text = ", ".join(f"{k}={v}" for k, v in dev.items()) if isinstance(dev, dict) else dev
        info.append((f"device {i}", text))
    if info:
        blocks += [Heading(2, "Provenance"), Table(["item", "value"], [[k, str(v)] for k, v in info])]
    return blocks + (_runs(manifest_runs(m)) if m else [])


def _runs(runs: list[dict]) -> list[Block]:
    """One line per invocation, when there was more than one (a resumed job): what each ran, where."""
    if len(runs) < 2:
        return []

    def devices(run: dict) -> str:
        names = {f"{d.get('host')}: {d.get('device_name') or d.get('device')}" if isinstance(d, dict) else str(d)
                 for d in run.get("devices") or []}
        return "; ".join(sorted(names)) or "—"

    def corpora(run: dict) -> str:
        listed = run.get("corpus_sha256") or {}
        return ", ".join(f"{c} {str(sha)[:12]}" for c, sha in listed.items()) if isinstance(listed, dict) else "—"

    rows = [
        [str(i + 1), str(r.get("started_at") or "—"), str(r.get("finished_at") or "not finished"),
         _num(r.get("trials_run")), str(r.get("git_commit") or "—")[:12],
         str((r.get("versions") or {}).get("torch") or "—"), devices(r), corpora(r) or "—"]
        for i, r in enumerate(runs)
    ]
    headers = ["run", "started", "finished", "trials run", "git commit", "torch", "devices", "corpus sha256"]
    return [Heading(2, "Runs"), Para("Each invocation of the job, first to last (a resumed job has several)."),
            Table(headers, rows)]


def _training_sections(rows: list[dict], config_cols: list[str], evals: list[dict]) -> list[Block]:
    if not rows:
        return []
    varying = varying_columns(rows, [c for c in config_cols if c != SEED])
    label = {r["trial_id"]: config_label(r, varying) for r in rows}
    metric = ranking_metric(rows)
    best_col, curve_col = metric.trials_column, metric.evals_column
    # One colour per configuration, in trial order, shared by every plot.
    colors = plots.config_colors([label[r["trial_id"]] for r in rows])
    blocks: list[Block] = [Para(metric.why)]
    blocks += _curves(evals, label, curve_col, colors)
    ok = [r for r in rows if r["status"] in SUCCESS_STATUSES]
    blocks += _by_config(rows, ok, label, best_col, colors)
    blocks += _best_trials(rank_trials(rows, metric), varying, best_col)
    blocks += _failures(rows, label)
    return blocks


def _curves(evals: list[dict], label: dict, col: str, colors: dict) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Validation curves")]
    by_trial: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for e in evals:
        if e["trial_id"] in label and e[col] is not None and math.isfinite(e[col]):
            by_trial[e["trial_id"]].append((e["step"], e[col]))
    if not by_trial:
        return blocks + [Para("No evaluations recorded yet.")]
    curves = [
        plots.Curve(tid, label[tid], [s for s, _ in pts], [v for _, v in pts])
        for tid in label if (pts := sorted(by_trial.get(tid, [])))
    ]
    svg = plots.validation_curves_svg(curves, col, colors)
    return blocks + [Figure(svg, f"{col} against step, one line per trial, coloured by configuration")]


def _by_config(rows: list[dict], ok: list[dict], label: dict, col: str, colors: dict) -> list[Block]:
    blocks: list[Block] = [Heading(2, f"{col} by configuration (mean ± 95% CI across seeds)")]
    if not ok:
        return blocks + [Para("No completed trials yet.")]
    # Every configuration gets a row, even one whose trials all failed (n=0), so none vanishes.
    groups: dict[str, list[dict]] = {label[r["trial_id"]]: [] for r in rows}
    for r in ok:
        groups[label[r["trial_id"]]].append(r)
    excluded = Counter(label[r["trial_id"]] for r in rows if r["status"] not in SUCCESS_STATUSES)
    stats = {name: mean_ci([r[col] for r in g]) for name, g in groups.items()}
    order = sorted(groups, key=lambda k: (math.isnan(stats[k][0]), stats[k][0]))
    table = []
    for name in order:
        mean, half, n = stats[name]
        values = [r[col] for r in groups[name] if r[col] is not None and math.isfinite(r[col])]
        ci = "n=1" if n == 1 else ("—" if n == 0 else f"± {half:.4f} [{mean - half:.4f}, {mean + half:.4f}]")
        table.append([name, str(n), _num(mean) if n else "—", ci, _num(min(values, default=None)),
                      _num(max(values, default=None)), str(excluded.get(name, 0))])
    blocks += [
        Para("Only completed and early-stopped trials count; the CI is the t-distribution's "
             "(t(0.975, n-1) · sd / √n). 'not counted' = failed, diverged or OOM trials."),
        Table(["configuration", "n", "mean", "95% CI", "min", "max", "not counted"], table),
    ]
    shown = [k for k in order if stats[k][2] > 0]
    if shown:
        svg = plots.config_points_svg(shown, [stats[k][0] for k in shown], [stats[k][1] for k in shown],
                                      [stats[k][2] for k in shown], col, colors)
        blocks.append(Figure(svg, f"mean {col} by configuration with 95% CI (no bar for n=1)"))
    return blocks + _paired(groups, shown, col)


def _paired(groups: dict[str, list[dict]], order: list[str], col: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Paired comparison against the best configuration")]
    if len(order) < 2:
        return blocks + [Para("Fewer than two configurations with a finite metric: nothing to compare.")]
    best = order[0]
    if not any(SEED in r for g in groups.values() for r in g):
        return blocks + [Para(f"No {SEED} column: trials cannot be paired by seed.")]

    def by_seed(g: list[dict]) -> dict:
        vals: dict[Any, list[float]] = defaultdict(list)
        for r in g:
            if r[col] is not None and math.isfinite(r[col]):
                vals[r.get(SEED)].append(r[col])
        return {s: sum(v) / len(v) for s, v in vals.items()}  # repeats of a seed are averaged

    ref = by_seed(groups[best])
    table = []
    for name in order[1:]:
        other = by_seed(groups[name])
        res = paired_test(other, ref)
        if res is None:
            k = len(shared_seeds(other, ref))
            why = f"no test: {k} shared seed(s) with finite values; need ≥ 2"
            table.append([name, str(k), "—", "—", "—", "—", why])
            continue
        table.append([name, str(res.n), f"{res.mean_diff:+.4f}", f"± {res.ci_half_width:.4f}",
                      _num(res.t, ".3f"), _num(res.p, ".3g"), res.note or ""])
    return blocks + [
        Para(f"Best configuration: {best}. Each other configuration is compared with it on the seeds "
             f"both ran (scipy.stats.ttest_rel on per-seed {col}); difference = this − best, so "
             "positive means worse. p-values are not corrected for multiple comparisons."),
        Table(["configuration", "pairs", "mean diff", "95% CI", "t", "p", "note"], table),
    ]


def _best_trials(ranked: Sequence[Mapping[str, Any]], varying: Sequence[str], col: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, f"Best trials (top {_TOP_N} by {col})")]
    if not ranked:
        return blocks + [Para("No completed trial has a finite validation metric yet.")]
    cols = [*varying, SEED] if any(SEED in r for r in ranked) else list(varying)
    table = [
        [str(i), r["trial_id"], *(_num(r.get(c), "") for c in cols), _num(r["best_val_loss"]),
         _num(r["best_val_bpc"]), _num(r["best_val_accuracy"]), _num(r["params"], ","),
         _num(r["steps"], "d"), _num(r["train_time_s"], ".1f")]
        for i, r in enumerate(ranked[:_TOP_N], 1)
    ]
    headers = ["#", "trial", *cols, "val loss", "val bpc", "val acc", "params", "steps", "time (s)"]
    return blocks + [Table(headers, table)]


def _failures(rows: list[dict], label: dict) -> list[Block]:
    failed = [r for r in rows if r["status"] in FAILURE_STATUSES]
    blocks: list[Block] = [Heading(2, f"Failures ({len(failed)})")]
    if not failed:
        return blocks + [Para("None.")]
    table = [[r["trial_id"], r["status"], label[r["trial_id"]], _num(r.get(SEED), ""),
              _num(r["attempts"], "d"), _num(r["steps"], "d"), _reason(r["error"])] for r in failed]
    return blocks + [Table(["trial", "status", "configuration", "seed", "attempts", "steps", "reason"], table)]


def _throughput_section(rows: list[dict], config_cols: list[str]) -> list[Block]:
    varying = varying_columns(rows, [c for c in config_cols if c not in (SEED, "train.batch_size")])
    series: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        device = r.get("device_name") or r.get("device") or "?"
        series[f"{config_label(r, varying)} @ {device}"].append(r)
    plotted = []
    for name, pts in series.items():
        ok = [p for p in pts if p["status"] == "ok" and p["samples_per_s"] is not None]
        best = next(((p["batch_size"], p["samples_per_s"]) for p in ok if p["is_best"]), None)
        plotted.append(plots.ThroughputSeries(
            name, [p["batch_size"] for p in ok], [p["samples_per_s"] for p in ok],
            oom_batch_sizes=[p["batch_size"] for p in pts if p["status"] == "oom"],
            error_batch_sizes=[p["batch_size"] for p in pts if p["status"] == "error"], best=best))
    table = [
        [name, r.get("precision") or "—", str(r["batch_size"]), "OOM" if r["status"] == "oom" else r["status"],
         _num(r["samples_per_s"], ",.1f"), _num(r["tokens_per_s"], ",.0f"), _num(r["step_time_ms"], ".2f"),
         _num(r["step_time_ms_max"], ".2f"), _num(r["peak_mem_mb"], ",.0f"), "★ best" if r["is_best"] else "",
         _reason(r["error"]) if r["error"] else ""]
        for name, pts in series.items() for r in sorted(pts, key=lambda p: p["batch_size"])
    ]
    return [
        Heading(2, "Throughput by batch size"),
        Figure(plots.throughput_svg(plotted),
               "samples/s against batch size (log2); ★ = best batch size, ✕ at zero = out of memory"),
        Table(["configuration @ device", "precision", "batch size", "status", "samples/s", "tokens/s",
               "step ms (median)", "step ms (max)", "peak mem MB", "best", "error"], table),
    ]


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
            out.append(e(b.text))
        elif isinstance(b, Table):
            out.append("| " + " | ".join(e(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            out.extend("| " + " | ".join(e(c) for c in row) + " |" for row in b.rows)
        elif isinstance(b, Figure):
            out.append(f"_Plot: {e(b.caption)} (see report.html)._")
        out.append("")
    return "\n".join(out)


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1200px;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f2f2f2} tr:nth-child(even) td{background:#fafafa}
figure{margin:1em 0} figcaption{font-size:.85em;color:#555} svg{max-width:100%;height:auto}
"""


def to_html(blocks: Sequence[Block], title: str) -> str:
    """One self-contained page: inline CSS and SVG, nothing fetched from anywhere."""
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.headers)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):  # the SVG is matplotlib's output, which escapes its own text
            body.append(f"<figure>{b.svg}<figcaption>{e(b.caption)}</figcaption></figure>")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body) + "\n</body>\n</html>\n"
    )
