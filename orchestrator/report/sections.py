"""The report's sections that every job has: header and provenance, runs, failures, throughput.

The training sections (curves, statistics, conclusion) are in
:mod:`~orchestrator.report.training` and :mod:`~orchestrator.report.conclusion`.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Optional

from orchestrator.durations import format_duration
from orchestrator.report import plots
from orchestrator.report.blocks import (
    SCHEDULER_STATUSES,
    SEED,
    Block,
    Figure,
    Heading,
    Para,
    Table,
    fmt_num,
    mapping,
    one_line,
)
from orchestrator.report.stats import config_label
from orchestrator.results import FAILURE_STATUSES, manifest_runs
from orchestrator.results.ranking import varying_columns

__all__ = [
    "LIVE_BANNER",
    "RUNNING_HEADING",
    "ended_banner",
    "failures",
    "header",
    "job_kind",
    "overview",
    "provenance",
    "running_section",
    "throughput_section",
]

#: How a live report's banner begins (:func:`orchestrator.report.render.end_live_report` finds it by this).
LIVE_BANNER = "Live: the sweep is still running"
#: The heading of a live report's running trials.
RUNNING_HEADING = "Running now"


def job_kind(manifest: Optional[dict], has_throughput: bool) -> str:
    """The job's kind: the manifest's, else the spec text's ``kind:`` line, else from the files."""
    m = manifest or {}
    found = re.search(r"^kind:\s*['\"]?(\w+)", str(m.get("spec_text") or ""), re.MULTILINE)
    return m.get("kind") or (found and found.group(1)) or ("throughput" if has_throughput else "train")


def header(name: str, live: bool = False, job_dir: str = "DIR") -> list[Block]:
    """The title, and for a live report a banner saying the sweep is still running, as of when
    (a run killed before its final report leaves this page behind: the banner says how to tell)."""
    blocks: list[Block] = [Heading(1, f"Report: {name}")]
    if live:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        blocks.append(Para(f"{LIVE_BANNER} (as of {now}). This page shows the trials finished "
                           "so far; it is rebuilt as more finish and the browser reloads it every 30 s. If it has "
                           "not changed for minutes, the run may have stopped: rebuild it with "
                           f"`python -m orchestrator report {job_dir}`.", box="live"))
    return blocks


def ended_banner(job_dir: str = "DIR") -> Para:
    """The banner that replaces a live one once its run has stopped updating the page (the sweep
    ended; the final report, which drops the banner, is written next unless the run is killed first)."""
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Para(f"Stopped: the sweep is no longer running (it ended or was stopped at {now}) and this page was not "
                "rebuilt after that, so it shows the trials finished by then and no text sample. Rebuild the full "
                f"report with `python -m orchestrator report {job_dir}`.", box="live")


def running_section(running: Sequence[Any]) -> list[Block]:
    """A live report's running trials, from their latest heartbeat or evaluation: where each is, its
    pace and when it was last heard from (``orchestrator.run.board.RunningTrial`` objects)."""
    now = time.time()
    rows = []
    for r in running:
        step = f"{r.step:,}" + (f" / {r.total:,}" if r.total else "")
        eta = format_duration(r.eta_s) if r.eta_s is not None else ""
        pace = f"{r.steps_per_s:,.1f}" if r.steps_per_s else ""
        rows.append([r.label, r.phase, step, fmt_num(r.train_loss), fmt_num(r.val_loss), pace, eta,
                     f"{format_duration(max(0.0, now - r.heard_at))} ago"])
    return [Heading(2, RUNNING_HEADING),
            Para("Each running trial's latest heartbeat (sent every 15 s while it trains) or evaluation; the "
                 "train loss is the mean since its last evaluation. Finished trials are in the sections below."),
            Table(["trial", "phase", "step", "train loss", "last val loss", "steps/s", "ETA", "heard"], rows)]


def overview(kind: str, rows: list[dict]) -> list[Block]:
    """The job's kind, when the report was made, and its trials by status."""
    counts = Counter(r["status"] for r in rows)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    return [
        Heading(2, "Trials"),
        Para(f"Kind: {kind}. Trials: {len(rows)}. Generated {now} from the job folder's files."),
        Table(["status", "trials"], [[s, str(n)] for s, n in sorted(counts.items())]),
    ]


def provenance(rows: list[dict], manifest: Optional[dict]) -> list[Block]:
    """Where the results came from: the manifest's record and the corpus hashes the trials saw."""
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
    info += list(mapping(m.get("versions")).items())
    host = mapping(m.get("host"))
    if host:
        info.append(("host", f"{host.get('hostname')} ({host.get('platform')})"))
    devices = m.get("devices")
    for i, dev in enumerate(devices if isinstance(devices, list) else []):
        text = ", ".join(f"{k}={v}" for k, v in dev.items()) if isinstance(dev, dict) else dev
        info.append((f"device {i}", text))
    blocks: list[Block] = []
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
         fmt_num(r.get("trials_run")), str(r.get("git_commit") or "—")[:12],
         str((r.get("versions") or {}).get("torch") or "—"), devices(r), corpora(r) or "—"]
        for i, r in enumerate(runs)
    ]
    headers = ["run", "started", "finished", "trials run", "git commit", "torch", "devices", "corpus sha256"]
    return [Heading(2, "Runs"), Para("Each invocation of the job, first to last (a resumed job has several)."),
            Table(headers, rows)]


def failures(rows: list[dict], label: dict) -> list[Block]:
    """Failed, diverged, OOM and timed-out trials with one line of reason each (pruned is not one)."""
    failed = [r for r in rows if r["status"] in FAILURE_STATUSES - SCHEDULER_STATUSES]
    blocks: list[Block] = [Heading(2, f"Failures ({len(failed)})")]
    if not failed:
        return blocks + [Para("None.")]
    table = [[r["trial_id"], r["status"], label[r["trial_id"]], fmt_num(r.get(SEED), ""),
              fmt_num(r["attempts"], "d"), fmt_num(r["steps"], "d"), one_line(r["error"])] for r in failed]
    return blocks + [Table(["trial", "status", "configuration", "seed", "attempts", "steps", "reason"], table)]


def throughput_section(rows: list[dict], config_cols: list[str]) -> list[Block]:
    """Samples/s by batch size per configuration and device: a plot and every measured row."""
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
         fmt_num(r["samples_per_s"], ",.1f"), fmt_num(r["tokens_per_s"], ",.0f"), fmt_num(r["step_time_ms"], ".2f"),
         fmt_num(r["step_time_ms_max"], ".2f"), fmt_num(r["peak_mem_mb"], ",.0f"), "★ best" if r["is_best"] else "",
         one_line(r["error"]) if r["error"] else ""]
        for name, pts in series.items() for r in sorted(pts, key=lambda p: p["batch_size"])
    ]
    return [
        Heading(2, "Throughput by batch size"),
        Figure(plots.throughput_svg(plotted),
               "samples/s against batch size (log2); ★ = best batch size, ✕ at zero = out of memory"),
        Table(["configuration @ device", "precision", "batch size", "status", "samples/s", "tokens/s",
               "step ms (median)", "step ms (max)", "peak mem MB", "best", "error"], table),
    ]
