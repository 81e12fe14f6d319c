"""Bookkeeping: what recording a finished trial costs the driver, at 100, 1,000 and 10,000 trials.

``python -m bench.bookkeeping`` (or the ``bookkeeping`` line of ``python -m bench``) feeds
synthetic finished trials - a trials row with a realistic config (about 20 config columns)
and 10 evaluations each - through :meth:`ResultsStore.commit_trial` into a temporary job folder,
as the dispatcher does when a trial ends, and times every commit.

Figures:

- ``per_trial_ms``: the median commit time over a window of trials ending at each checkpoint
  (trials 51-100, 951-1,000 and 9,951-10,000 by default), and ``ratio``: the last figure over
  the first. A design whose cost does not grow with the trials finished gives about 1.
- ``compact_s``: one :meth:`ResultsStore.compact` of all the parts at the end (the runner's).
- ``resume_parts_ms`` / ``resume_table_ms``: :meth:`ResultsStore.finished_trial_ids` (what
  a resumed run reads first) before compaction (over the parts) and after (over the table).
- ``old_rewrite_ms``: the design this replaced, for contrast: reading the whole
  ``trials.parquet`` and writing it back with one more row (what ``upsert_trial`` did for
  each finished trial), at each checkpoint's size.

The targets are <= 5 ms per trial at 10,000 and a ratio <= 1.5. Every commit is durable
(fsync of the part and of its folder), so the figures depend on the disk.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

CHECKPOINTS = (100, 1_000, 10_000)
WINDOW = 50
EVALS_PER_TRIAL = 10
TARGET_MS, TARGET_RATIO = 5.0, 1.5


def synthetic_trial(i: int) -> tuple[dict[str, Any], list[Any]]:
    """Trial ``i``'s row (as ``trial_row`` builds it) and its evaluations."""
    from rnn.events import EvalRecord

    cells = ("lstm", "gru", "rnn")
    config = {
        "data": {"corpus": "tinyshakespeare", "level": "char" if i % 2 else "bpe", "seq_len": 64 + 32 * (i % 3),
                 "vocab_size": 4096, "val_fraction": 0.1},
        "model": {"cell": cells[i % 3], "embedding_dim": 128, "hidden_size": 128 * (1 + i % 4),
                  "num_layers": 1 + i % 3, "dropout": 0.1 * (i % 4), "layer_norm": bool(i % 2),
                  "tie_weights": False},
        "train": {"batch_size": 32 * (1 + i % 4), "lr": 10 ** -(2 + i % 3), "max_steps": 2000,
                  "eval_every": 200, "scheduler": "cosine", "seed": i % 5, "amp": "auto", "device": "cuda",
                  "clip": 1.0},
    }
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i)
    row = {
        "trial_id": f"{i:012x}", "status": "completed", "best_val_loss": 1.5 - i * 1e-5, "best_val_bpc": 2.1,
        "best_val_accuracy": 0.55, "best_step": 1800, "params": 1_000_000 + i, "steps": 2000, "device": "cuda",
        "precision": "bf16", "train_time_s": 120.0, "started_at": t0, "finished_at": t0 + dt.timedelta(minutes=2),
        "error": None, "checkpoint": f"checkpoints/{i:012x}/best.pt", "attempts": 1,
        "corpus_sha256": "ab" * 32, "vocab_size": 4096, "config": config,
    }
    evals = [EvalRecord(step=200 * (k + 1), epoch=0.1 * k, train_loss=2.0 - 0.05 * k, val_loss=2.1 - 0.05 * k,
                        val_bpc=3.0 - 0.07 * k, val_perplexity=8.0 - 0.3 * k, val_accuracy=0.4 + 0.01 * k,
                        lr=1e-3, grad_norm=0.8, samples_per_s=9000.0, tokens_per_s=576000.0, elapsed_s=12.0 * k)
             for k in range(EVALS_PER_TRIAL)]
    return row, evals


def _old_rewrite_ms(folder: Path, rows: int) -> float:
    """One upsert of the old design into a ``trials.parquet`` of ``rows`` rows (median of 3)."""
    import pyarrow.parquet as pq

    from orchestrator.results.records import TRIAL_FIXED
    from orchestrator.results.storage import open_storage
    from orchestrator.results.tables import build_table, normalize_trial_row

    storage = open_storage(folder, None)
    base = build_table(TRIAL_FIXED, [normalize_trial_row(synthetic_trial(i)[0]) for i in range(rows)])
    storage.write_atomic("trials.parquet", lambda f: pq.write_table(base, f))
    times = []
    for k in range(3):
        new = normalize_trial_row(synthetic_trial(rows + k)[0])
        start = time.perf_counter()
        old = storage.read_table("trials.parquet")
        table = build_table(TRIAL_FIXED, old.to_pylist() + [new], old.schema)
        storage.write_atomic("trials.parquet", lambda f, t=table: pq.write_table(t, f))
        times.append(time.perf_counter() - start)
        storage.write_atomic("trials.parquet", lambda f: pq.write_table(base, f))  # back to `rows` rows
    return statistics.median(times) * 1e3


def measure(checkpoints: Sequence[int] = CHECKPOINTS, window: int = WINDOW, old_design: bool = True,
            root: Optional[Path] = None) -> dict[str, Any]:
    """Commit ``max(checkpoints)`` synthetic trials and return the figures of the module doc."""
    from orchestrator.results import ResultsStore

    checkpoints = sorted(checkpoints)
    with tempfile.TemporaryDirectory(prefix="bench-bookkeeping-", dir=root) as tmp:
        store = ResultsStore(Path(tmp) / "job")
        trials = [synthetic_trial(i) for i in range(checkpoints[-1])]
        commit_s: list[float] = []
        t_all = time.perf_counter()
        for row, evals in trials:
            start = time.perf_counter()
            store.commit_trial(row, evals)
            commit_s.append(time.perf_counter() - start)
        total_s = time.perf_counter() - t_all
        windows = {}
        for cp in checkpoints:
            w = commit_s[max(0, cp - window):cp]
            windows[cp] = {"first": max(1, cp - window + 1), "last": cp, "median_ms": statistics.median(w) * 1e3,
                           "mean_ms": statistics.fmean(w) * 1e3, "max_ms": max(w) * 1e3}
        start = time.perf_counter()
        finished = store.finished_trial_ids()
        resume_parts_ms = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        folded = store.compact()
        compact_s = time.perf_counter() - start
        start = time.perf_counter()
        finished_after = ResultsStore(Path(tmp) / "job").finished_trial_ids()
        resume_table_ms = (time.perf_counter() - start) * 1e3
        if not (len(finished) == len(finished_after) == folded == checkpoints[-1]):
            raise RuntimeError(f"bookkeeping lost trials: {len(finished)} finished, {folded} compacted, "
                               f"{len(finished_after)} after compaction, of {checkpoints[-1]}")
        evals_rows = store.read_evals().num_rows
        old = {cp: _old_rewrite_ms(Path(tmp) / f"old-{cp}", cp) for cp in checkpoints} if old_design else {}
    first, last = windows[checkpoints[0]]["median_ms"], windows[checkpoints[-1]]["median_ms"]
    return {
        "trials": checkpoints[-1], "evals_per_trial": EVALS_PER_TRIAL, "evals_rows": evals_rows,
        "windows": windows, "per_trial_ms": {cp: w["median_ms"] for cp, w in windows.items()},
        "ratio": last / first, "target_ms": TARGET_MS, "target_ratio": TARGET_RATIO,
        "commit_total_s": total_s, "compact_s": compact_s, "resume_parts_ms": resume_parts_ms,
        "resume_table_ms": resume_table_ms, "old_rewrite_ms": old,
    }


def format_bookkeeping(d: dict[str, Any]) -> str:
    """The figures as a few lines."""
    ok = lambda good: "ok" if good else "ABOVE TARGET"  # noqa: E731
    cps = list(d["windows"])
    last = d["per_trial_ms"][cps[-1]]
    lines = [f"bookkeeping: {d['trials']:,} finished trials x {d['evals_per_trial']} evaluations committed "
             f"(commit_trial, fsynced) in {d['commit_total_s']:.1f}s"]
    for cp, w in d["windows"].items():
        old = d["old_rewrite_ms"].get(cp)
        contrast = f"; old design (rewrite trials.parquet) {old:.1f} ms" if old is not None else ""
        lines.append(f"  at {cp:>6,} trials (commits {w['first']:,}-{w['last']:,}): median {w['median_ms']:.2f} ms"
                     f" per trial (mean {w['mean_ms']:.2f}, max {w['max_ms']:.1f}){contrast}")
    lines += [
        f"  per trial at {cps[-1]:,}: {last:.2f} ms (target <= {d['target_ms']} ms: {ok(last <= d['target_ms'])});"
        f" ratio {cps[-1]:,}/{cps[0]:,}: {d['ratio']:.2f}"
        f" (target <= {d['target_ratio']}: {ok(d['ratio'] <= d['target_ratio'])})",
        f"  compact() of {d['trials']:,} parts: {d['compact_s']:.2f}s ({d['evals_rows']:,} evaluation rows);"
        f" resume read finished_trial_ids(): {d['resume_parts_ms']:.0f} ms over parts,"
        f" {d['resume_table_ms']:.0f} ms after compaction",
    ]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bookkeeping", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, nargs="+", default=list(CHECKPOINTS),
                   help="checkpoints: trial counts at which the per-trial cost is read (default 100 1000 10000)")
    p.add_argument("--window", type=int, default=WINDOW,
                   help=f"commits per figure, ending at each checkpoint (default {WINDOW})")
    p.add_argument("--no-old", action="store_true", help="skip the old design's contrast figures")
    p.add_argument("--dir", type=Path, default=None,
                   help="where the temporary job folder goes (default: the system's temp)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    figures = measure(args.trials, args.window, old_design=not args.no_old, root=args.dir)
    print(format_bookkeeping(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
