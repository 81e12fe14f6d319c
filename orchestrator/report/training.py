"""The training job's evidence: curves, the metric by configuration with CIs, paired tests, best trials.

:func:`summarize` groups the trials by configuration once; the tables here and the conclusion
(:mod:`~orchestrator.report.conclusion`) read the same :class:`ConfigStat` objects, so the
sentence at the top and the tables below it cannot disagree.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from orchestrator.report import plots
from orchestrator.report.blocks import SCHEDULER_STATUSES, SEED, Block, Figure, Heading, Para, Table, fmt_num
from orchestrator.report.stats import PairedTest, mean_ci, paired_test, shared_seeds
from orchestrator.results import SUCCESS_STATUSES

__all__ = ["ConfigStat", "best_trials", "by_config", "compare_with_best", "curves", "summarize"]

_TOP_N = 10
#: Train-and-validation panels: one per configuration, best first, at most this many.
_MAX_PANELS = 12
#: Line pairs (seeds) drawn per panel, at most.
_MAX_PAIRS = 20


@dataclass(frozen=True)
class ConfigStat:
    """One configuration's final metric across its counted (completed or early-stopped) trials."""

    name: str
    mean: float
    half_width: float  # of the 95% CI; NaN for n < 2
    n: int
    by_seed: dict[Any, float]  # seed -> metric (repeats of a seed averaged)
    values: list[float]
    not_counted: int  # failed, diverged, OOM, timed out
    pruned: int  # stopped or paused by the scheduler
    partial: float = math.nan  # the best metric of its scheduler-stopped trials (a shorter budget)


def summarize(rows: list[dict], label: Mapping[str, str], col: str) -> list[ConfigStat]:
    """Every configuration (even one with no counted trial, n=0), best mean first."""
    groups: dict[str, list[dict]] = {label[r["trial_id"]]: [] for r in rows}
    for r in rows:
        if r["status"] in SUCCESS_STATUSES:
            groups[label[r["trial_id"]]].append(r)
    pruned = Counter(label[r["trial_id"]] for r in rows if r["status"] in SCHEDULER_STATUSES)
    partial: dict[str, float] = {}
    for r in rows:
        v = r.get(col)
        if r["status"] in SCHEDULER_STATUSES and v is not None and math.isfinite(v):
            partial[label[r["trial_id"]]] = min(v, partial.get(label[r["trial_id"]], math.inf))
    other = Counter(label[r["trial_id"]] for r in rows
                    if r["status"] not in SUCCESS_STATUSES and r["status"] not in SCHEDULER_STATUSES)
    out = []
    for name, g in groups.items():
        mean, half, n = mean_ci([r[col] for r in g])
        seeds: dict[Any, list[float]] = defaultdict(list)
        for r in g:
            if r[col] is not None and math.isfinite(r[col]):
                seeds[r.get(SEED)].append(r[col])
        out.append(ConfigStat(name, mean, half, n, {s: sum(v) / len(v) for s, v in seeds.items()},
                              [v for vs in seeds.values() for v in vs], other.get(name, 0), pruned.get(name, 0),
                              partial.get(name, math.nan)))

    def order(s: ConfigStat) -> tuple[bool, float]:
        # Counted configurations by mean; then those the scheduler stopped, by their best on a
        # shorter budget; then the rest.
        if s.n:
            return False, s.mean
        return True, s.partial if math.isfinite(s.partial) else math.inf

    return sorted(out, key=order)


def compare_with_best(stats: Sequence[ConfigStat]) -> list[tuple[ConfigStat, Optional[PairedTest]]]:
    """Each configuration with a finite mean after the best, and its paired test against the best."""
    shown = [s for s in stats if s.n > 0]
    if len(shown) < 2:
        return []
    return [(s, paired_test(s.by_seed, shown[0].by_seed)) for s in shown[1:]]


def curves(evals: list[dict], label: Mapping[str, str], col: str, colors: dict, statuses: Mapping[str, str],
           order: Sequence[str], baseline: Optional[float] = None) -> list[Block]:
    """All validation curves in one plot (with the unigram loss ``baseline``, when ``col`` is the
    loss), then train and validation loss together per configuration."""
    blocks: list[Block] = [Heading(2, "Validation curves")]
    by_trial: dict[str, list[dict]] = defaultdict(list)
    for e in evals:
        if e["trial_id"] in label:
            by_trial[e["trial_id"]].append(e)
    for pts in by_trial.values():
        pts.sort(key=lambda e: e["step"])

    def curve(tid: str, key: str) -> plots.Curve:
        pts = [(e["step"], e[key]) for e in by_trial[tid] if e[key] is not None and math.isfinite(e[key])]
        return plots.Curve(tid, label[tid], [s for s, _ in pts], [v for _, v in pts],
                           pruned=statuses.get(tid) in SCHEDULER_STATUSES)

    val = [c for tid in label if tid in by_trial and (c := curve(tid, col)).steps]
    if not val:
        return blocks + [Para("No evaluations recorded yet.")]
    pruned_note = "; ✕ ends a trial the scheduler pruned" if any(c.pruned for c in val) else ""
    drawn = val
    if len(val) > plots.MAX_LINES:  # the worst drawn first, so the best end up on top
        drawn = plots.thin(sorted(val, key=_lowest), plots.MAX_LINES)[::-1]
        pruned_note += (f"; {len(drawn):,} of {len(val):,} trials drawn, at evenly spaced ranks of their "
                        f"lowest {col} (the best and the worst included)")
    if baseline is not None:
        pruned_note += f"; dotted: the unigram baseline, {baseline:.4f}"
    blocks.append(Figure(plots.validation_curves_svg(drawn, col, colors, baseline),
                         f"{col} against step, one line per trial, coloured by configuration{pruned_note}"))
    panels, thinned = [], False
    for name in order[:_MAX_PANELS]:
        tids = [t for t in label if label[t] == name and t in by_trial]
        pairs = [p for t in tids if (p := (curve(t, "train_loss"), curve(t, "val_loss")))[1].steps or p[0].steps]
        if len(pairs) > _MAX_PAIRS:
            pairs, thinned = plots.thin(sorted(pairs, key=lambda p: _lowest(p[1])), _MAX_PAIRS), True
        if any(v.steps for _, v in pairs):
            panels.append(plots.Panel(name, pairs))
    more = len(order) - _MAX_PANELS
    blocks += [
        Heading(2, "Train and validation loss by configuration"),
        Para("Solid: validation loss; dashed: training loss (nats per token, the same quantity on both "
             "splits, measured at each evaluation); one line pair per seed. A validation curve that "
             "turns up while the training curve keeps falling is overfitting."
             + (f" The {_MAX_PANELS} best configurations are shown; {more} more are in the tables." if more > 0
                else "")),
        Figure(plots.train_val_panels_svg(panels, colors), "training (dashed) and validation (solid) loss "
               "against step, one panel per configuration, best first"
               + (f"; a panel with more than {_MAX_PAIRS} trials draws {_MAX_PAIRS} of them, at evenly spaced "
                  "ranks of their lowest validation loss" if thinned else "")),
    ]
    return blocks


def _lowest(c: plots.Curve) -> float:
    """A curve's best (lowest) finite value; a curve without one ranks last."""
    return min((v for v in c.values if math.isfinite(v)), default=math.inf)


def by_config(stats: Sequence[ConfigStat], col: str, colors: dict) -> list[Block]:
    """The metric per configuration with a 95% CI, a plot of it, and the paired comparisons."""
    blocks: list[Block] = [Heading(2, f"{col} by configuration (mean ± 95% CI across seeds)")]
    if not any(s.n for s in stats):
        return blocks + [Para("No completed trials yet.")]
    table = []
    for s in stats:
        lo, hi = s.mean - s.half_width, s.mean + s.half_width
        ci = "n=1" if s.n == 1 else ("—" if s.n == 0 else f"± {s.half_width:.4f} [{lo:.4f}, {hi:.4f}]")
        table.append([s.name, str(s.n), fmt_num(s.mean) if s.n else "—", ci, fmt_num(min(s.values, default=None)),
                      fmt_num(max(s.values, default=None)), str(s.not_counted), str(s.pruned)])
    blocks += [
        Para("Only completed and early-stopped trials count; the CI is the t-distribution's "
             "(t(0.975, n-1) · sd / √n). 'not counted' = failed, diverged, OOM or timed-out trials; "
             "'pruned' = stopped early by the scheduler (their curves are shown, their shorter-budget "
             "metric is not averaged in)."),
        Table(["configuration", "n", "mean", "95% CI", "min", "max", "not counted", "pruned"], table),
    ]
    shown = [s for s in stats if s.n > 0]
    svg = plots.config_points_svg([s.name for s in shown], [s.mean for s in shown], [s.half_width for s in shown],
                                  [s.n for s in shown], col, colors)
    blocks.append(Figure(svg, f"mean {col} by configuration with 95% CI (no bar for n=1)"))
    return blocks + _paired(stats, col)


def _paired(stats: Sequence[ConfigStat], col: str) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Paired comparison against the best configuration")]
    compared = compare_with_best(stats)
    if not compared:
        return blocks + [Para("Fewer than two configurations with a finite metric: nothing to compare.")]
    best = next(s for s in stats if s.n > 0)
    if all(None in s.by_seed for s in stats if s.n > 0):
        return blocks + [Para(f"No {SEED} column: trials cannot be paired by seed.")]
    table = []
    for s, res in compared:
        if res is None:
            k = len(shared_seeds(s.by_seed, best.by_seed))
            why = f"no test: {k} shared seed(s) with finite values; need ≥ 2"
            table.append([s.name, str(k), "—", "—", "—", "—", why])
            continue
        table.append([s.name, str(res.n), f"{res.mean_diff:+.4f}", f"± {res.ci_half_width:.4f}",
                      fmt_num(res.t, ".3f"), fmt_num(res.p, ".3g"), res.note or ""])
    return blocks + [
        Para(f"Best configuration: {best.name}. Each other configuration is compared with it on the seeds "
             f"both ran (scipy.stats.ttest_rel on per-seed {col}); difference = this − best, so "
             "positive means worse. p-values are not corrected for multiple comparisons."),
        Table(["configuration", "pairs", "mean diff", "95% CI", "t", "p", "note"], table),
    ]


def tokens_per_s(row: Mapping[str, Any]) -> Optional[float]:
    """A trial's training speed: ``steps * train.batch_size * data.seq_len`` tokens over its training time
    less its evaluations (``eval_time_s``); None where a figure is missing."""
    figures: list[float] = []
    for key in ("steps", "train.batch_size", "data.seq_len", "train_time_s"):
        x = row.get(key)
        if not isinstance(x, (int, float)) or not math.isfinite(x) or x <= 0:
            return None
        figures.append(float(x))
    steps, batch, seq_len, seconds = figures
    evaluating = row.get("eval_time_s")
    if isinstance(evaluating, (int, float)) and math.isfinite(evaluating):
        seconds -= evaluating
    return steps * batch * seq_len / seconds if seconds > 0 else None


def best_trials(ranked: Sequence[Mapping[str, Any]], varying: Sequence[str], col: str) -> list[Block]:
    """The top trials by the ranking metric with what varies, their metrics, size, speed and time."""
    blocks: list[Block] = [Heading(2, f"Best trials (top {_TOP_N} by {col})")]
    if not ranked:
        return blocks + [Para("No completed trial has a finite validation metric yet.")]
    cols = [*varying, SEED] if any(SEED in r for r in ranked) else list(varying)
    table = [
        [str(i), r["trial_id"], *(fmt_num(r.get(c), "") for c in cols), fmt_num(r["best_val_loss"]),
         fmt_num(r["best_val_bpc"]), fmt_num(r["best_val_accuracy"]), fmt_num(r["params"], ","),
         fmt_num(r["steps"], "d"), fmt_num(tokens_per_s(r), ",.0f"), fmt_num(r["train_time_s"], ".1f")]
        for i, r in enumerate(ranked[:_TOP_N], 1)
    ]
    headers = ["#", "trial", *cols, "val loss", "val bpc", "val acc", "params", "steps", "tokens/s", "time (s)"]
    return blocks + [Table(headers, table), *_partial_validation(ranked), *_validation_mode(ranked)]


def _validation_mode(rows: Sequence[Mapping[str, Any]]) -> list[Block]:
    """A plain word when trials were scored with the state carried over the held-out split
    (``data.val_mode: stream``): nothing when every trial used fixed windows, the default."""
    modes = {r.get("data.val_mode") or "windows" for r in rows}
    if modes == {"windows"}:
        return []
    if len(modes) > 1:
        return [Para(
            "These trials were scored in two validation modes (data.val_mode: windows and stream), and their "
            "figures do not compare: reading the held-out split as streams with the state carried gives the same "
            "weights a lower loss than fixed windows that each start from a zero state."
        )]
    return [Para(
        "Validation figures read the held-out split as contiguous streams with the recurrent state carried "
        "(data.val_mode: stream), as recurrent language models are usually reported; for the same weights they "
        "are lower than the default fixed windows' (each from a zero state), so compare them with jobs scored "
        "the same way."
    )]


def _partial_validation(rows: Sequence[Mapping[str, Any]]) -> list[Block]:
    """A plain word when the validation figures come from part of the held-out split only
    (``data.val_max_chars``): nothing when every trial evaluated all of it."""
    shares = sorted({float(r["val_coverage"]) for r in rows if r.get("val_coverage") is not None})
    if not shares or shares[0] >= 1.0:
        return []
    share = f"{shares[0]:.1%}" if len(shares) == 1 else f"{shares[0]:.1%} to {shares[-1]:.1%}"
    return [Para(
        f"Validation figures are measured on the first {share} of the held-out split, not all of it "
        "(data.val_max_chars; the same text for every trial, so trials compare fairly). They estimate the "
        "whole split's; set data.val_max_chars to null to evaluate all of it."
    )]
