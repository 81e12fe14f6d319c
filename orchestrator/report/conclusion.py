"""The answer at the top of the report: which configuration is best, by how much, and whether
the seeds run support calling the difference real; then the best configuration and how to get it
as a spec.

Only what the statistics support is said: the comparison is the paired t-test of the runner-up
against the best on the seeds both ran (:func:`orchestrator.report.stats.paired_test`); with one
seed per configuration, or fewer than two shared seeds, the report says no significance can be
claimed.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from orchestrator.report.blocks import SEED, Block, Code, Heading, Link, Para, Table, fmt_num
from orchestrator.report.training import ConfigStat, compare_with_best

__all__ = ["ALPHA", "best_configuration", "best_trial_of", "conclusion"]

#: The significance level the conclusion states results at (two-sided, uncorrected).
ALPHA = 0.05


def _what(col: str) -> tuple[str, str]:
    return ("validation bits per character", "") if col == "best_val_bpc" else ("validation loss", " nats/token")


#: A best mean loss within this fraction of the unigram baseline has not learned beyond token
#: frequencies: the conclusion says so before anything else.
UNIGRAM_MARGIN = 0.03


def unigram_guard(best_mean: float, unigram: Optional[float]) -> Optional[str]:
    """The sentence that opens the conclusion when the best configuration's mean validation loss is
    within :data:`UNIGRAM_MARGIN` of the unigram baseline (or above it), else None."""
    if unigram is None or not math.isfinite(unigram) or unigram <= 0 or best_mean < unigram * (1 - UNIGRAM_MARGIN):
        return None
    return (f"No configuration has learned much beyond how often each token occurs: the best mean validation "
            f"loss, {best_mean:.4f} nats/token, is within {(1 - best_mean / unigram):.1%} of the unigram baseline "
            f"{unigram:.4f} (token frequencies alone, no context). The differences below are between models that "
            "have barely started to learn and say little about which settings are better: train longer "
            "(train.max_steps) before comparing them.")


def conclusion(stats: Sequence[ConfigStat], col: str, failed: int, pruned: int,
               unigram: Optional[float] = None) -> list[Block]:
    """One paragraph in plain words, from the same per-configuration statistics as the tables;
    ``unigram`` (the validation loss of token frequencies alone, when ``col`` is the loss) guards
    it against ranking models that have learned nothing yet."""
    shown = [s for s in stats if s.n > 0]
    extra = []
    if failed:
        extra.append(f"{failed} trial(s) failed, diverged, ran out of memory or timed out and are not counted.")
    if pruned:
        extra.append(f"{pruned} trial(s) were stopped early by the scheduler (pruned or paused) and are not "
                     "averaged in.")
    blocks: list[Block] = [Heading(2, "Conclusion")]
    guard = unigram_guard(shown[0].mean, unigram) if shown and col == "best_val_loss" else None
    if guard is not None:
        blocks.append(Para(guard, box="answer"))
    if not shown:
        return blocks + [Para(" ".join(["No conclusion yet: no trial has completed with a finite metric.", *extra]),
                              box="answer")]
    best = shown[0]
    what, unit = _what(col)
    if len(shown) == 1 and pruned and len(stats) > 1:
        text = (f"Successive halving ran {best.name} to the full budget: mean {what} {best.mean:.4f}{unit} over "
                f"{best.n} trial(s). The other configurations were stopped at earlier rungs, judged on their "
                "validation loss there, so there is no full-budget runner-up and no significance can be claimed; "
                "the parameters section compares every trial at the step all of them reached.")
        return blocks + [Para(" ".join([text, *extra[:1]]), box="answer")]
    if len(shown) == 1:
        first = (f"All {best.n} counted trial(s) share one configuration" if len(stats) == 1 else
                 f"Only {best.name} has counted trials ({best.n})")
        text = f"{first}, with a mean {what} of {best.mean:.4f}{unit}; there is nothing to compare it with."
        return blocks + [Para(" ".join([text, *extra]), box="answer")]
    runner = shown[1]
    diff = runner.mean - best.mean
    rel = f" ({diff / abs(runner.mean):.1%})" if runner.mean else ""
    seeds = f"{best.n} seed{'s' if best.n != 1 else ''}"
    parts = [f"Best: {best.name}, with a mean {what} of {best.mean:.4f}{unit} over {seeds}. The runner-up, "
             f"{runner.name}, is {diff:.4f} higher{rel}."]
    compared = dict((s.name, res) for s, res in compare_with_best(stats))
    res = compared.get(runner.name)
    if res is None:
        if best.n <= 1 and runner.n <= 1:
            parts.append("With one seed per configuration, no significance can be claimed: the difference may be "
                         "seed-to-seed noise. Run more seeds (sweep.seeds) to test it.")
        else:
            parts.append("Fewer than two seeds ran on both, so no paired test is possible and no significance "
                         "can be claimed.")
    elif res.note:
        parts.append(f"Every one of the {res.n} shared seeds gives the same difference, so the t-test is "
                     "undefined and no p-value can be given.")
    else:
        df = res.n - 1
        test = f"paired t-test on {df} degree{'s' if df != 1 else ''} of freedom, p = {res.p:.3g}"
        if res.p < ALPHA:
            parts.append(f"The difference is significant at the {ALPHA:.0%} level on the {res.n} seeds both ran "
                         f"({test}; difference {res.mean_diff:+.4f} ± {res.ci_half_width:.4f}).")
        else:
            parts.append(f"The difference is not significant at the {ALPHA:.0%} level on the {res.n} seeds both "
                         f"ran ({test}): these seeds cannot tell the two apart.")
        if res.n < FEW_SEEDS:
            parts.append(f"With {res.n} seeds this is weak evidence either way: the test has little power and "
                         "rests on the seed-to-seed differences being normal; more seeds (sweep.seeds) would "
                         "settle it.")
    others = [r for s, r in compare_with_best(stats)[1:]]
    if others:
        tested = [r for r in others if r is not None and not r.note]
        worse = sum(1 for r in tested if r.p < ALPHA and r.mean_diff > 0)
        if tested:
            parts.append(f"Of the {len(tested)} other configuration(s) tested against the best, {worse} "
                         f"{'is' if worse == 1 else 'are'} significantly worse (p < {ALPHA}, not corrected for "
                         "multiple comparisons).")
        untested = sum(1 for r in others if r is None)
        if untested:
            parts.append(f"{untested} other configuration(s) share fewer than two seeds with the best and "
                         "cannot be tested.")
    return blocks + [Para(" ".join([*parts, *extra]), box="answer")]


#: Below this many shared seeds a paired t-test's verdict is stated with a caution.
FEW_SEEDS = 5


def best_trial_of(
    best: ConfigStat, ranked: Sequence[Mapping[str, Any]], label: Mapping[str, str]
) -> Optional[Mapping[str, Any]]:
    """The best configuration's best trial (``ranked`` is best first). It is the report's "best
    checkpoint": the best single trial overall may belong to a configuration that is worse on
    average, and one lucky seed is not the answer."""
    return next((r for r in ranked if label[r["trial_id"]] == best.name), None)


def best_configuration(
    best: ConfigStat, top: Optional[Mapping[str, Any]], varying: Sequence[str], col: str, job_dir: str,
    best_file: Optional[str] = None,
) -> list[Block]:
    """The best configuration's swept settings, its best trial ``top``, a link to ``best_file`` (the
    spec of it written beside the report, when there is one) and the command that exports it."""
    blocks: list[Block] = [Heading(2, "Best configuration")]
    if top is None:
        return blocks + [Para(f"{best.name}: no trial with a finite {col}.")]
    settings = [[c, fmt_num(top.get(c), "")] for c in varying]
    seed = f" (seed {top.get(SEED)})" if SEED in top else ""
    blocks += [
        Para(f"{best.name}: mean {col} {best.mean:.4f} over {best.n} counted trial(s); its best trial is "
             f"{top['trial_id']}{seed} with {fmt_num(top[col])} at step {fmt_num(top.get('best_step'), 'd')}. "
             "Every setting not listed is as in the spec."),
    ]
    if settings:
        blocks.append(Table(["setting", "value"], settings))
    if best_file:
        blocks.append(Link("As a runnable spec (the best trial's full config, no sweep):", best_file))
    again = "To print it again (or ranked by another --metric):"
    blocks += [Para(again if best_file else "To get it as a runnable spec:"),
               Code(f"python -m orchestrator best {shlex.quote(job_dir)} > best.yaml")]
    return blocks
