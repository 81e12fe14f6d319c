"""Search: TPE proposals against random draws, both under successive halving, side by side in one run.

    python -m bench.search [--samples 16] [--startup 5] [--seeds 0 1 2] [--max-steps 810] [--grace 90]

The random sweep of ``jobs/asha_builtin.yaml`` (tiny char-level LSTMs on the builtin corpus,
CPU) widened to three parameters: ``train.lr`` log-uniform in [3e-4, 3e-2], ``model.hidden_size``
in {32, 64, 128} and ``model.dropout`` uniform in [0, 0.4]. The model keeps ``num_layers: 1``:
there PyTorch's between-layer dropout is off (``rnn/models.py``, ``_between``), but the model's
own dropout still acts on the embeddings and on the recurrent outputs before the head, so the
third parameter does change training (in the first run the reference's best cell had dropout
0.2, its second best 0.0; docs/benchmarks.md). Each side runs once per search seed (``sweep.random.seed`` for random,
``sweep.tpe.seed`` for TPE) with the same number of proposals, through ``run_job`` on an
embedded Ray, with ``sweep.scheduler: {type: asha}`` on both; the trainer's own seed
(``train.seed``) is the spec's on every trial.

The reference is a grid over the same three parameters, every cell trained to ``max_steps``
without ASHA: ``--grid-lrs`` learning rates log-spaced over [3e-4, 3e-2] (ends included) x the
three hidden sizes x ``--grid-dropouts`` dropouts spaced over [0, 0.4]. It is the best a
dense, unpruned sweep finds; a search may land between its lattice points and beat it.

Printed per side and search seed: the best validation loss, the training steps spent (the sum of
the trials' ``steps``), and the best found after each quarter of the proposals, in proposal
order: for TPE the accepted proposals in ``search/`` (:func:`orchestrator.results.proposals.read_proposals`),
for random the trials' index order in the spec. "Found after k proposals" is the best final
``best_val_loss`` among the trials of the first k proposals, whatever ASHA did to them later:
it ranks what each proposal order put on the table, not the wall clock. Then each side's mean
best against the reference's, and the issue's targets: TPE+ASHA's mean best at most random+ASHA's
and at least as good in 2 of 3 seeds; both sides' mean best within 2% of the reference.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from bench.common import write_json

#: The spec the sides start from: its model, data, training and ASHA settings.
SPEC = Path(__file__).resolve().parents[1] / "jobs" / "asha_builtin.yaml"
LR = (3.0e-4, 3.0e-2)
HIDDEN = [32, 64, 128]
DROPOUT = (0.0, 0.4)
SPACE: dict[str, dict[str, Any]] = {
    "train.lr": {"dist": "loguniform", "low": LR[0], "high": LR[1]},
    "model.hidden_size": {"dist": "choice", "values": HIDDEN},
    "model.dropout": {"dist": "uniform", "low": DROPOUT[0], "high": DROPOUT[1]},
}
PATHS = tuple(SPACE)
SIDES = ("random", "tpe")
LABELS = {"random": "random+ASHA", "tpe": "TPE+ASHA"}


def spaced(low: float, high: float, n: int, log: bool = False) -> list[float]:
    """``n`` values from ``low`` to ``high``, ends included (log-spaced if ``log``), rounded to 3 digits."""
    if n == 1:
        return [high]
    if log:
        a, b = math.log(low), math.log(high)
        return [float(f"{math.exp(a + (b - a) * k / (n - 1)):.3g}") for k in range(n)]
    return [float(f"{low + (high - low) * k / (n - 1):.3g}") for k in range(n)]


def base_spec(name: str, output: str, args: argparse.Namespace) -> dict[str, Any]:
    """``jobs/asha_builtin.yaml`` with the command line's sizes and no sweep."""
    import yaml

    raw = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    raw.update(name=name, output=output)
    raw["train"].update(max_steps=args.max_steps, eval_every=args.grace)
    raw["resources"]["max_concurrent"] = args.concurrency
    raw["sweep"] = {}
    return raw


def search_spec(side: str, seed: int, output: str, args: argparse.Namespace) -> dict[str, Any]:
    """One side's sweep for one search seed: ``args.samples`` proposals under ASHA."""
    raw = base_spec(f"{side}-s{seed}", output, args)
    if side == "random":
        raw["sweep"]["random"] = {"samples": args.samples, "seed": seed, "space": SPACE}
    else:
        raw["sweep"]["tpe"] = {"samples": args.samples, "seed": seed, "startup": args.startup, "space": SPACE}
    raw["sweep"]["scheduler"] = {"type": "asha", "metric": "val_loss", "grace_steps": args.grace,
                                 "reduction_factor": args.rf}
    return raw


def grid_values(args: argparse.Namespace) -> dict[str, list[Any]]:
    """The reference grid's values per path."""
    return {"train.lr": spaced(*LR, args.grid_lrs, log=True), "model.hidden_size": list(HIDDEN),
            "model.dropout": spaced(*DROPOUT, args.grid_dropouts)}


def reference_spec(output: str, args: argparse.Namespace) -> dict[str, Any]:
    """The grid, every cell to ``max_steps``, no scheduler."""
    raw = base_spec("reference", output, args)
    raw["sweep"]["grid"] = grid_values(args)
    return raw


def run_sweep(raw: dict[str, Any], local: bool) -> dict[str, Any]:
    """Run one sweep; its rows, its proposals (trial ids per proposal, in order), what TPE did, wall time."""
    from orchestrator.results import ResultsStore
    from orchestrator.results.proposals import read_proposals
    from orchestrator.run import LocalBackend, run_job
    from orchestrator.spec import build_job

    job = build_job(raw, source=f"bench.search:{raw['name']}")
    backend = LocalBackend(workers=raw["resources"]["max_concurrent"]) if local else None
    start = time.monotonic()
    outcome = run_job(job, backend=backend)
    wall = time.monotonic() - start
    store = ResultsStore(outcome.job_dir)
    rows = {r["trial_id"]: r for r in store.read_trials().to_pylist()}
    if job.search is not None:
        records = read_proposals(store)
        groups = [list(r.trial_ids) for r in records if r.accepted]
        tpe: Optional[dict[str, Any]] = {
            "proposals": len(records), "accepted": len(groups),
            "from_model": sum(1 for r in records if r.accepted and r.from_model),
            "startup_draws": sum(1 for r in records if r.accepted and not r.from_model),
            "refused": [{"number": r.number, "why": r.refused} for r in records if r.refused],
            "duplicates": [{"number": r.number, "of": r.duplicate_of} for r in records if r.duplicate_of is not None],
            "order": [{"number": r.number, "from_model": r.from_model, "values": r.values} for r in records],
        }
    else:
        groups = [[t.trial_id] for t in sorted(job.trials, key=lambda t: t.index)]
        tpe = None
    return {"rows": rows, "groups": groups, "tpe": tpe, "wall_s": wall, "exit_code": outcome.exit_code}


def _best_row(rows: Sequence[dict[str, Any]]) -> Optional[dict[str, Any]]:
    scored = [r for r in rows if r.get("best_val_loss") is not None and math.isfinite(r["best_val_loss"])]
    return min(scored, key=lambda r: r["best_val_loss"]) if scored else None


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """One sweep's best (and its values), training steps, statuses, and the best after each quarter."""
    rows, groups = run["rows"], run["groups"]
    statuses: dict[str, int] = {}
    for r in rows.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    best = _best_row(list(rows.values()))
    quarters: list[Optional[float]] = []
    for q in range(1, 5):
        k = math.ceil(q * len(groups) / 4)
        found = _best_row([rows[tid] for group in groups[:k] for tid in group if tid in rows])
        quarters.append(found["best_val_loss"] if found else None)
    return {
        "best_val_loss": best["best_val_loss"] if best else None,
        "best_trial": best["trial_id"] if best else None,
        "best_values": {p: best.get(p) for p in PATHS} if best else None,
        "steps": int(sum(r["steps"] or 0 for r in rows.values())),
        "trials": len(rows), "proposals": len(groups), "statuses": statuses,
        "quarters": quarters, "tpe": run["tpe"], "wall_s": run["wall_s"], "exit_code": run["exit_code"],
    }


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known and len(known) == len(values) else None


def _f(value: Optional[float], fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _values(values: Optional[dict[str, Any]]) -> str:
    if not values:
        return ""
    return (f"lr {values['train.lr']:.2e}, hidden {values['model.hidden_size']}, "
            f"dropout {values['model.dropout']:.2f}")


def report(sides: dict[str, list[dict[str, Any]]], ref: Optional[dict[str, Any]],
           args: argparse.Namespace) -> dict[str, Any]:
    """Print the comparison; return the figures and the targets for the JSON."""
    seeds = list(args.seeds)
    n = args.samples
    marks = [math.ceil(q * n / 4) for q in range(1, 5)]
    print(f"search over (lr, hidden size, dropout): {n} proposals per search, ASHA grace {args.grace} rf {args.rf}, "
          f"max_steps {args.max_steps}, search seeds {', '.join(map(str, seeds))}, TPE start-up {args.startup}")
    if ref is not None:
        grid = grid_values(args)
        print(f"  reference: grid {len(grid['train.lr'])} lr x {len(HIDDEN)} hidden x {len(grid['model.dropout'])} "
              f"dropout = {ref['trials']} trials to {args.max_steps} steps, no ASHA: best {_f(ref['best_val_loss'])} "
              f"({_values(ref['best_values'])}), {ref['steps']:,} training steps, wall {ref['wall_s']:.0f} s")
    head = (f"  {'side':<12} {'seed':>4} {'best':>7}  " + " ".join(f"{'@' + str(m):>7}" for m in marks)
            + f" {'steps':>8} {'wall s':>6}  best at")
    print(head)
    print("  " + "-" * (len(head) - 2))
    figures: dict[str, Any] = {}
    for side, runs in sides.items():
        label = LABELS[side]
        for seed, s in zip(seeds, runs, strict=True):
            print(f"  {label:<12} {seed:>4} {_f(s['best_val_loss']):>7}  "
                  + " ".join(f"{_f(v):>7}" for v in s["quarters"])
                  + f" {s['steps']:>8,} {s['wall_s']:>6.0f}  {_values(s['best_values'])}")
        bests = [s["best_val_loss"] for s in runs]
        quarter_means = [_mean([s["quarters"][q] for s in runs]) for q in range(4)]
        steps_mean = statistics.fmean(s["steps"] for s in runs)
        print(f"  {label:<12} {'mean':>4} {_f(_mean(bests)):>7}  " + " ".join(f"{_f(v):>7}" for v in quarter_means)
              + f" {steps_mean:>8,.0f}")
        known = [b for b in bests if b is not None]
        figures[side] = {"mean_best": _mean(bests), "min_best": min(known) if known else None,
                         "max_best": max(known) if known else None, "quarter_means": quarter_means,
                         "mean_steps": steps_mean}
    print()
    for side in sides:
        fig, label = figures[side], LABELS[side]
        rel = ""
        if ref is not None and ref["best_val_loss"] and fig["mean_best"] is not None:
            fig["vs_reference"] = fig["mean_best"] / ref["best_val_loss"]
            rel = f", x{fig['vs_reference']:.4f} the reference's best ({(fig['vs_reference'] - 1) * 100:+.2f}%)"
        steps_rel = f" ({fig['mean_steps'] / ref['steps']:.1%} of the reference's)" if ref else ""
        print(f"  {label:<12} mean best {_f(fig['mean_best'])} (range {_f(fig['min_best'])}-{_f(fig['max_best'])})"
              f"{rel}; {fig['mean_steps']:,.0f} training steps per search{steps_rel}")
    for seed, s in zip(seeds, sides.get("tpe", []), strict=False):
        t = s["tpe"] or {}
        odd = []
        if t.get("refused"):
            odd.append(f"{len(t['refused'])} refused")
        if t.get("duplicates"):
            odd.append(f"{len(t['duplicates'])} repeats of earlier proposals")
        print(f"  TPE seed {seed}: {t.get('accepted', 0)} proposals accepted of {t.get('proposals', 0)} made, "
              f"{t.get('startup_draws', 0)} start-up draws and {t.get('from_model', 0)} from the model"
              + (f"; {', '.join(odd)}" if odd else ""))

    targets: dict[str, Optional[bool]] = {}
    r_mean, t_mean = figures.get("random", {}).get("mean_best"), figures.get("tpe", {}).get("mean_best")
    if "random" in sides and "tpe" in sides and r_mean is not None and t_mean is not None:
        pairs = list(zip((s["best_val_loss"] for s in sides["tpe"]), (s["best_val_loss"] for s in sides["random"]),
                         strict=True))
        wins = sum(1 for t, r in pairs if t is not None and r is not None and t <= r)
        need = math.ceil(2 * len(pairs) / 3)
        targets["tpe_mean_le_random"] = t_mean <= r_mean
        targets["tpe_as_good_in_2_of_3"] = wins >= need
        print(f"  target: TPE+ASHA's mean best <= random+ASHA's ({t_mean:.4f} vs {r_mean:.4f}): "
              f"{'met' if targets['tpe_mean_le_random'] else 'NOT met'}")
        print(f"  target: TPE+ASHA at least as good in {need} of {len(pairs)} seeds (it is in {wins}): "
              f"{'met' if targets['tpe_as_good_in_2_of_3'] else 'NOT met'}")
    if ref is not None:
        for side in sides:
            rel = figures[side].get("vs_reference")
            targets[f"{side}_within_2pct"] = rel is not None and rel <= 1.02
            print(f"  target: {LABELS[side]}'s mean best within 2% of the reference's "
                  f"({'-' if rel is None else f'{(rel - 1) * 100:+.2f}%'}): "
                  f"{'met' if targets[f'{side}_within_2pct'] else 'NOT met'}")
    return {"figures": figures, "targets": targets}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=16, help="proposals per search, both sides (default 16)")
    p.add_argument("--startup", type=int, default=5, help="TPE's start-up (random) proposals (default 5)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="search seeds (default 0 1 2)")
    p.add_argument("--max-steps", type=int, default=810, help="the full budget per trial (default 810)")
    p.add_argument("--grace", type=int, default=90, help="ASHA's first rung, also eval_every (default 90)")
    p.add_argument("--rf", type=int, default=3, help="reduction factor (default 3)")
    p.add_argument("--grid-lrs", type=int, default=5, help="the reference grid's learning rates (default 5)")
    p.add_argument("--grid-dropouts", type=int, default=3, help="the reference grid's dropouts (default 3)")
    p.add_argument("--no-reference", action="store_true", help="skip the reference grid (no 2%% targets)")
    p.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES), help="which searches (default both)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (default 2)")
    p.add_argument("--local", action="store_true", help="run trials in this process (LocalBackend), not on Ray")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default bench/out/search-<date>.json)")
    p.add_argument("--keep", type=Path, default=None, help="keep the job folders here (default: a temporary folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="the sweeps' progress lines")
    p.add_argument("--quick", action="store_true",
                   help="a tiny harness check (4 proposals, 2 seeds, 36 steps, a 2x3x2 grid); its figures mean nothing")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.startup, args.seeds = 4, 2, [0, 1]
        args.max_steps, args.grace, args.grid_lrs, args.grid_dropouts = 36, 4, 2, 2
    if args.startup < 1 or args.samples < 1 or args.grid_lrs < 1 or args.grid_dropouts < 1:
        p.error("--samples, --startup, --grid-lrs and --grid-dropouts must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("orchestrator", "rnn"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    start = time.monotonic()
    sides: dict[str, list[dict[str, Any]]] = {side: [] for side in args.sides}
    ref: Optional[dict[str, Any]] = None
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        root = str(args.keep) if args.keep else tmp
        for seed in args.seeds:  # the sides alternate, so a change in the machine's load falls on both
            for side in args.sides:
                sides[side].append(summarize(run_sweep(search_spec(side, seed, root, args), args.local)))
        if not args.no_reference:
            ref = summarize(run_sweep(reference_spec(root, args), args.local))
    wall = time.monotonic() - start
    result = report(sides, ref, args)
    print(f"  wall {wall:.0f} s in all")
    out = args.out or Path(__file__).resolve().parent / "out" / f"search-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(out, {"args": vars(args) | {"out": str(out)}, "sides": sides, "reference": ref, "wall_s": wall,
                     **result})
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
