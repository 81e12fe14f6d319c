"""Report plots as inline SVG strings.

Figures are built with ``matplotlib.figure.Figure`` and never touch pyplot, so no GUI backend
is selected and no global figure state is kept (the SVG backend renders headless, like Agg).
Text stays text (``svg.fonttype: none``): the files are small and the labels searchable.
Inputs are plain Python data, so the plots can be tested without any results files.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "MAX_LINES",
    "Curve",
    "Panel",
    "SearchPoint",
    "ThroughputSeries",
    "config_colors",
    "config_points_svg",
    "parallel_coordinates_svg",
    "search_history_svg",
    "thin",
    "throughput_svg",
    "to_svg",
    "train_val_panels_svg",
    "validation_curves_svg",
]

_MAX_LEGEND = 20  # legend entries; more configurations than this are noise in a legend
#: One-line-per-trial plots draw at most this many trials (see :func:`thin`): a sweep of
#: thousands drawn whole is an unreadable block of colour, a page of tens of megabytes, and
#: most of the report's build time (about 80% of 19 s at 10,000 trials).
MAX_LINES = 300
#: Characters per line of a small-multiple panel's title (about the panel's width at 8 pt).
_PANEL_TITLE_CHARS = 48

T = TypeVar("T")


def thin(ranked: Sequence[T], limit: int = MAX_LINES) -> list[T]:
    """``ranked`` (best first) cut to ``limit`` items at evenly spaced ranks, the best and the
    worst included, so a plot keeps the sweep's spread; all of it when it is no longer."""
    n = len(ranked)
    if n <= limit:
        return list(ranked)
    if limit < 2:
        return list(ranked[:limit])
    return [ranked[round(i * (n - 1) / (limit - 1))] for i in range(limit)]


@dataclass(frozen=True)
class Curve:
    """One trial's validation curve, coloured by its configuration."""

    trial_id: str
    config: str
    steps: Sequence[float]
    values: Sequence[float]
    pruned: bool = False  # stopped early by the scheduler: its last point is marked


@dataclass(frozen=True)
class Panel:
    """One configuration's (train, validation) curve pairs, one pair per trial."""

    config: str
    pairs: Sequence[tuple[Curve, Curve]]


@dataclass(frozen=True)
class ThroughputSeries:
    """Samples/s by batch size for one model configuration on one device."""

    label: str
    batch_sizes: Sequence[int]  # the ``ok`` points
    samples_per_s: Sequence[float]
    oom_batch_sizes: Sequence[int] = ()
    error_batch_sizes: Sequence[int] = ()
    best: Optional[tuple[int, float]] = None  # (batch size, samples/s)


@dataclass(frozen=True)
class SearchPoint:
    """One proposal of a search, at its place in the order proposed."""

    order: int  # 1, 2, ... over the proposals that made trials
    value: float  # its metric (the mean over its seeds)
    from_model: bool  # chosen by the sampler's model (else a random start-up draw)
    full_budget: bool  # ran to the full budget; else its best before it stopped (drawn hollow)


def _text(s: str) -> str:
    """Labels come from data: a ``$`` would switch matplotlib into mathtext and may fail to parse."""
    return s.replace("$", r"\$")


def config_colors(configs: Sequence[str]) -> dict[str, tuple]:
    """A stable colour per configuration (in first-seen order)."""
    unique = list(dict.fromkeys(configs))
    if len(unique) <= 20:  # qualitative maps keep neighbours distinguishable
        cmap = matplotlib.colormaps["tab10" if len(unique) <= 10 else "tab20"]
        return {c: cmap(i) for i, c in enumerate(unique)}
    cmap = matplotlib.colormaps["viridis"]
    return {c: cmap(i / (len(unique) - 1)) for i, c in enumerate(unique)}


def to_svg(fig: Figure, key: str) -> str:
    """Serialise a figure to an ``<svg>`` element: no XML prolog or DOCTYPE, deterministic ids.

    ``key`` salts the element ids so several figures inlined in one page do not collide.
    """
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"report-{key}"}):
        fig.savefig(buf, format="svg", bbox_inches="tight",
                    metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    root = re.search(r"<svg[\s>]", svg)  # drop the XML prologue and doctype: the SVG is inlined
    if root is None:
        raise RuntimeError("matplotlib wrote no <svg> element")
    return svg[root.start():].strip()


def _legend(ax, handles_by_label: dict) -> None:
    labels = list(handles_by_label)
    if not labels:
        return
    shown = labels[:_MAX_LEGEND]
    title = None if len(labels) <= _MAX_LEGEND else f"first {_MAX_LEGEND} of {len(labels)}"
    ax.legend([handles_by_label[k] for k in shown], [_text(k) for k in shown], title=title,
              fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


def validation_curves_svg(
    curves: Sequence[Curve], ylabel: str, colors: Optional[Mapping[str, Any]] = None,
    baseline: Optional[float] = None,
) -> str:
    """One line per trial, metric against step; colour = configuration (``colors``, by label,
    keeps colours the same across plots). ``baseline``: the unigram loss, drawn as a dotted line,
    so a plot zoomed onto near-identical curves still shows how far they are from learning nothing."""
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    colors = colors or config_colors([c.config for c in curves])
    handles: dict[str, object] = {}
    for c in curves:
        (line,) = ax.plot(c.steps, c.values, color=colors[c.config], lw=1.3, alpha=0.85,
                          marker="o" if len(c.steps) == 1 else None, ms=3)
        handles.setdefault(c.config, line)
        if c.pruned:
            ax.plot(c.steps[-1:], c.values[-1:], marker="X", ms=7, color=colors[c.config], mec="black", ls="none")
    if any(c.pruned for c in curves):
        handles["pruned (stopped at a rung)"] = ax.plot([], [], marker="X", ms=7, color="gray", mec="black",
                                                       ls="none")[0]
    if baseline is not None and math.isfinite(baseline):
        handles["unigram baseline (token frequencies alone)"] = ax.axhline(baseline, color="gray", ls=":", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel(_text(ylabel))
    ax.grid(alpha=0.3)
    _legend(ax, handles)
    return to_svg(fig, "curves")


def train_val_panels_svg(panels: Sequence[Panel], colors: Optional[Mapping[str, Any]] = None) -> str:
    """Small multiples: per configuration, each trial's training loss (dashed) and validation loss
    (solid) against step, on one shared y axis so the panels compare."""
    cols = min(3, max(1, len(panels)))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.3 * cols, 2.6 * rows + 0.3))
    axes = fig.subplots(rows, cols, sharey=True, squeeze=False)
    colors = colors or config_colors([p.config for p in panels])
    for ax, panel in zip(axes.flat, panels, strict=False):
        color = colors[panel.config]
        for train, val in panel.pairs:
            ax.plot(val.steps, val.values, color=color, lw=1.3, marker="o" if len(val.steps) == 1 else None, ms=3)
            ax.plot(train.steps, train.values, color=color, lw=1.1, ls="--", alpha=0.8)
            if val.pruned and val.steps:
                ax.plot(val.steps[-1:], val.values[-1:], marker="X", ms=6, color=color, mec="black", ls="none")
        # wrapped: a label naming many swept settings would run into the next panel's title
        ax.set_title("\n".join(textwrap.wrap(_text(panel.config), _PANEL_TITLE_CHARS)), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("loss (nats/token)", fontsize=8)
    for ax in axes[-1, :]:
        ax.set_xlabel("step", fontsize=8)
    fig.tight_layout()
    return to_svg(fig, "trainval")


def config_points_svg(
    labels: Sequence[str], means: Sequence[float], half_widths: Sequence[float],
    ns: Sequence[int], xlabel: str, colors: Optional[Mapping[str, Any]] = None,
) -> str:
    """Mean per configuration with 95% CI error bars (none for n=1), one row each."""
    fig = Figure(figsize=(9, max(2.2, 0.45 * len(labels) + 1.0)))
    ax = fig.add_subplot()
    colors = colors or config_colors(labels)
    for y, (label, mean, half, n) in enumerate(zip(labels, means, half_widths, ns, strict=True)):
        if not math.isfinite(mean):
            continue
        xerr = half if math.isfinite(half) else None
        ax.errorbar([mean], [y], xerr=xerr, fmt="o", color=colors[label], capsize=4, ms=6)
        ax.annotate(f"n={n}", (mean, y), textcoords="offset points", xytext=(0, 7),
                    ha="center", fontsize=7)
    ax.set_yticks(range(len(labels)), [_text(lbl) for lbl in labels], fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlabel(_text(xlabel))
    ax.grid(axis="x", alpha=0.3)
    return to_svg(fig, "configs")


def throughput_svg(series: Sequence[ThroughputSeries]) -> str:
    """Samples/s against batch size (log2 x); the best point starred, OOM/error points as crosses."""
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    colors = config_colors([s.label for s in series])
    handles: dict[str, object] = {}
    top = max((v for s in series for v in s.samples_per_s if math.isfinite(v)), default=1.0)
    for s in series:
        color = colors[s.label]
        pts = sorted(zip(s.batch_sizes, s.samples_per_s, strict=True))
        (line,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker="o", ms=4)
        handles.setdefault(s.label, line)
        if s.best is not None:
            ax.plot([s.best[0]], [s.best[1]], marker="*", ms=15, color=color, mec="black", ls="none")
        # OOM points have no throughput: draw them on the x axis, where nothing else sits.
        if s.oom_batch_sizes:
            ax.plot(list(s.oom_batch_sizes), [0.0] * len(s.oom_batch_sizes), marker="X", ms=9,
                    color=color, mec="black", ls="none")
        if s.error_batch_sizes:
            ax.plot(list(s.error_batch_sizes), [0.0] * len(s.error_batch_sizes), marker="s",
                    ms=7, mfc="none", color=color, ls="none")
    if any(s.oom_batch_sizes for s in series):
        handles["OOM (out of memory)"] = ax.plot([], [], marker="X", ms=9, color="gray", mec="black", ls="none")[0]
    if any(s.error_batch_sizes for s in series):
        handles["error"] = ax.plot([], [], marker="s", ms=7, mfc="none", color="gray", ls="none")[0]
    if any(s.best for s in series):
        handles["best batch size"] = ax.plot([], [], marker="*", ms=12, color="gray", mec="black", ls="none")[0]
    ax.set_xscale("log", base=2)
    # Label the batch sizes that were measured, as plain numbers rather than powers of two.
    ticks = sorted({b for s in series for b in (*s.batch_sizes, *s.oom_batch_sizes, *s.error_batch_sizes)})
    if ticks:
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.minorticks_off()
    ax.set_ylim(bottom=-0.04 * top, top=top * 1.1)
    ax.set_xlabel("batch size")
    ax.set_ylabel("samples / s")
    ax.grid(alpha=0.3, which="both")
    _legend(ax, handles)
    return to_svg(fig, "throughput")


def _axis_positions(values: Sequence[Any]) -> tuple[list[float], list[float], list[str], bool]:
    """Map one parameter's values to [0, 1]: numbers linearly (log when positive and spanning
    at least 10x, as a learning rate does), anything else as evenly spaced categories.
    Returns positions, tick positions, tick labels and whether the axis is logarithmic."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if numeric and len(set(values)) > 1:
        lo, hi = min(values), max(values)
        log = lo > 0 and hi / lo >= 10
        f = (lambda v: math.log10(v)) if log else (lambda v: float(v))
        span = f(hi) - f(lo)
        pos = [(f(v) - f(lo)) / span for v in values]
        ticks = sorted(set(values)) if len(set(values)) <= 6 else [lo, hi]
        return pos, [(f(t) - f(lo)) / span for t in ticks], [format(t, ".3g") for t in ticks], log
    cats = sorted({str(v) for v in values})
    step = 1 / (len(cats) - 1) if len(cats) > 1 else 0.0
    where = {c: (i * step if len(cats) > 1 else 0.5) for i, c in enumerate(cats)}
    return [where[str(v)] for v in values], list(where.values()), cats, False


def parallel_coordinates_svg(params: Mapping[str, Sequence[Any]], metric: Sequence[float], metric_name: str) -> str:
    """One vertical axis per parameter and a last one for the metric; one line per trial, coloured
    by the metric (the best, lowest, drawn last and brightest)."""
    names = list(params)
    columns = [_axis_positions(list(params[n])) for n in names]
    columns.append(_axis_positions(list(metric)))
    fig = Figure(figsize=(max(6.0, 1.8 * (len(names) + 1)), 4.2))
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["viridis_r"]
    lo, hi = min(metric), max(metric)
    norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1e-9)
    xs = list(range(len(columns)))
    for i in sorted(range(len(metric)), key=lambda j: -metric[j]):  # worst first: the best ends on top
        ax.plot(xs, [c[0][i] for c in columns], color=cmap(norm(metric[i])), lw=1.4, alpha=0.8)
    for x, (_, ticks, labels, _) in zip(xs, columns, strict=True):
        ax.axvline(x, color="#444", lw=0.8)
        for t, lab in zip(ticks, labels, strict=True):
            ax.annotate(_text(lab), (x, t), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center",
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_xticks(xs, [_text(n) + (" (log)" if c[3] else "") for n, c in zip(names, columns, strict=False)]
                  + [_text(metric_name)], fontsize=8)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(columns) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=_text(metric_name), pad=0.02)
    if bar.solids is not None:  # vector, not an embedded PNG: the page holds no data: URL either
        bar.solids.set_rasterized(False)
        bar.solids.set_edgecolor("face")  # no hairlines between the colour steps
    return to_svg(fig, "parcoords")


def search_history_svg(points: Sequence[SearchPoint], running_best: Sequence[tuple[int, float]], ylabel: str) -> str:
    """Each proposal's metric against its place in the order proposed: start-up draws and the
    model's proposals in two markers and colours, hollow where the proposal did not run the full
    budget; ``running_best`` (order, value) as a step line."""
    fig = Figure(figsize=(9, 4.0))
    ax = fig.add_subplot()
    handles: dict[str, object] = {}
    styles = {False: ("start-up draw (random)", "s", "tab:gray"), True: ("TPE proposal", "o", "tab:blue")}
    for from_model, (name, marker, color) in styles.items():
        for full in (True, False):
            pts = [p for p in points if p.from_model is from_model and p.full_budget is full and math.isfinite(p.value)]
            if pts:
                ax.plot([p.order for p in pts], [p.value for p in pts], ls="none", marker=marker, ms=7, mew=1.5,
                        color=color, mfc=color if full else "white", zorder=3)
                # the legend shows the origin filled whatever was drawn; hollow has its own entry
                handles.setdefault(name, ax.plot([], [], ls="none", marker=marker, ms=7, mew=1.5, color=color)[0])
    if any(not p.full_budget and math.isfinite(p.value) for p in points):
        handles["hollow: stopped early (its best so far)"] = ax.plot([], [], ls="none", marker="o", ms=7, mew=1.5,
                                                                     color="gray", mfc="white")[0]
    if running_best:
        (line,) = ax.step([x for x, _ in running_best], [y for _, y in running_best], where="post",
                          color="tab:green", lw=1.6, zorder=2)
        handles["running best (completed only)"] = line
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("proposal (in the order proposed)")
    ax.set_ylabel(_text(ylabel))
    ax.grid(alpha=0.3)
    _legend(ax, handles)
    return to_svg(fig, "search")
