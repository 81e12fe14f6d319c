"""Successive halving (ASHA) against the full sweep it prunes, side by side in one run.

    python -m bench.asha [--samples 16] [--max-steps 810] [--grace 90] [--rf 3] [--seed 0]

One random sweep over ``train.lr`` (log-uniform) and ``model.hidden_size`` (a choice) on the
builtin corpus, char level, tiny models (``jobs/asha_builtin.yaml``), run twice through
``run_job`` on an embedded Ray
(same trials, same seeds, so the same trial ids): once to the full budget, once with
``sweep.scheduler: {type: asha}``. Printed: each side's best validation loss, their ratio,
and ASHA's training steps (the sum of each trial's ``steps``) as a fraction of the full
sweep's. The issue's target: ASHA within 2% of the full sweep's best for at most 40% of its
steps. Wall times are printed too, but two sweeps run one after the other on a shared
machine are not a timing comparison; the step fraction is the figure.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from bench.common import write_json

#: The ASHA side's spec; the full side is the same without ``sweep.scheduler``.
SPEC = Path(__file__).resolve().parents[1] / "jobs" / "asha_builtin.yaml"


def sweep_spec(name: str, output: str, args: argparse.Namespace, asha: bool) -> dict[str, Any]:
    """``jobs/asha_builtin.yaml`` with the command line's sizes; without its scheduler unless ``asha``."""
    import yaml

    raw = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    raw.update(name=name, output=output)
    raw["train"].update(max_steps=args.max_steps, eval_every=args.grace)
    raw["sweep"]["random"].update(samples=args.samples, seed=args.seed)
    raw["resources"]["max_concurrent"] = args.concurrency
    if asha:
        raw["sweep"]["scheduler"].update(grace_steps=args.grace, reduction_factor=args.rf)
    else:
        del raw["sweep"]["scheduler"]
    return raw


def run_side(raw: dict[str, Any]) -> dict[str, Any]:
    """Run one sweep; its best validation loss, total training steps, statuses and wall time."""
    from orchestrator.results import ResultsStore
    from orchestrator.run import run_job
    from orchestrator.spec import build_job

    job = build_job(raw, source=f"bench.asha:{raw['name']}")
    start = time.monotonic()
    outcome = run_job(job)
    wall = time.monotonic() - start
    rows = ResultsStore(outcome.job_dir).read_trials().to_pylist()
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    done = [r for r in rows if r["status"] in ("completed", "early_stopped") and r["best_val_loss"] is not None]
    best = min(done, key=lambda r: r["best_val_loss"])
    return {"best_val_loss": best["best_val_loss"], "best_trial": best["trial_id"],
            "best_lr": best["train.lr"], "best_hidden_size": best["model.hidden_size"],
            "steps": int(sum(r["steps"] or 0 for r in rows)), "trials": len(rows), "statuses": statuses,
            "wall_s": wall, "exit_code": outcome.exit_code}


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.asha", description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=16, help="random configurations (default 16)")
    p.add_argument("--max-steps", type=int, default=810, help="the full budget per trial (default 810)")
    p.add_argument("--grace", type=int, default=90, help="ASHA's first rung, also eval_every (default 90)")
    p.add_argument("--rf", type=int, default=3, help="reduction factor (default 3)")
    p.add_argument("--seed", type=int, default=0, help="the random sweep's seed (default 0)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (default 2)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default bench/out/asha-<date>.json)")
    p.add_argument("--keep", type=Path, default=None, help="keep both job folders here (default: a temporary folder)")
    p.add_argument("-v", "--verbose", action="store_true", help="the sweeps' progress lines")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    for name in ("orchestrator", "rnn"):
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-asha-") as tmp:
        root = str(args.keep) if args.keep else tmp
        full = run_side(sweep_spec("full", root, args, asha=False))
        halving = run_side(sweep_spec("asha", root, args, asha=True))
    ratio = halving["best_val_loss"] / full["best_val_loss"]
    fraction = halving["steps"] / full["steps"]
    print(f"random sweep of {args.samples} configurations (lr, hidden size), builtin corpus, "
          f"max_steps {args.max_steps}, ASHA grace {args.grace} rf {args.rf}, seed {args.seed}")
    for label, side in (("full sweep", full), ("ASHA", halving)):
        print(f"  {label:<10} best val loss {side['best_val_loss']:.4f} (lr {side['best_lr']:.2e}, hidden "
              f"{side['best_hidden_size']}), {side['steps']:,} training steps, {side['statuses']}, "
              f"wall {side['wall_s']:.0f} s")
    print(f"  ASHA / full: best val loss x{ratio:.4f} ({(ratio - 1) * 100:+.2f}%), "
          f"training steps {fraction:.1%} of the full sweep's")
    target = ratio <= 1.02 and fraction <= 0.40
    print(f"  target (within 2% for at most 40% of the steps): {'met' if target else 'NOT met'}")
    out = args.out or Path(__file__).resolve().parent / "out" / f"asha-{time.strftime('%Y%m%d-%H%M%S')}.json"
    write_json(out, {"args": vars(args) | {"out": str(out)}, "full": full, "asha": halving,
                     "loss_ratio": ratio, "steps_fraction": fraction, "target_met": target})
    print(f"  wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
