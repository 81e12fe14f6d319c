"""A large sweep, simulated: thousands of trivial trials through ``run`` on a multi-node Cluster.

``python -m bench.large_sweep [--trials 2000] [--nodes 4]`` starts a ``ray.cluster_utils.Cluster``
(a head with 0 CPUs plus ``--nodes`` worker nodes of 1 CPU each, all on loopback), writes a spec
of ``--trials`` trivial trials (a 2-step char LSTM of 8 units on a 20 KB corpus, one trial per
seed) and runs ``python -m orchestrator run SPEC --address CLUSTER`` against it as a user would.

It prints trials finished per second in equal windows of finished trials (from the first trial's
finish, so actor start-up is outside), the ratio of the last window's rate to the first one's
(target >= 0.9: nothing in the driver grows with the sweep), the end-to-end wall time, and the
driver process's peak resident memory. Only the Cluster this script started is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parent.parent


def spec(trials: int, corpus: Path, output: Path, tracking: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    extra = {"tracking": tracking} if tracking else {}
    return {**extra, 
        "name": "large-sweep",
        "data": {"corpus": str(corpus), "level": "char", "seq_len": 8, "val_fraction": 0.05},
        "model": {"cell": "lstm", "embedding_dim": 8, "hidden_size": 8, "num_layers": 1, "dropout": 0.0},
        "train": {"batch_size": 4, "max_steps": 2, "eval_every": 2, "scheduler": "constant", "device": "cpu"},
        "sweep": {"seeds": list(range(trials))},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 64, "max_retries": 1},
        "output": str(output),
    }


def window_rates(finished: list[float], windows: int) -> list[float]:
    """Trials per second in ``windows`` equal runs of consecutive finishes (sorted epoch seconds)."""
    finished = sorted(finished)
    size = max(1, (len(finished) - 1) // windows)
    rates = []
    for w in range(windows):
        lo, hi = w * size, min((w + 1) * size, len(finished) - 1)
        span = finished[hi] - finished[lo]
        rates.append((hi - lo) / span if span > 0 else float("inf"))
    return rates


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.large_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--tracking", choices=("off", "tensorboard", "mlflow", "both"), default="off",
                   help="also write the trials to TensorBoard and/or MLflow (a SQLite database beside the results)")
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import pyarrow.parquet as pq
    from ray.cluster_utils import Cluster

    with tempfile.TemporaryDirectory(prefix="bench-large-sweep-") as tmp:
        root = Path(tmp)
        import pydoc_data.topics

        corpus = root / "corpus.txt"
        corpus.write_text("".join(pydoc_data.topics.topics.values())[:20_000], encoding="utf-8")
        spec_path = root / "large.yaml"
        tracking = {"tensorboard": args.tracking in ("tensorboard", "both"),
                    "mlflow": f"sqlite:///{root / 'mlflow.db'}" if args.tracking in ("mlflow", "both") else None}
        spec_path.write_text(yaml.safe_dump(spec(args.trials, corpus, root / "results", tracking)), encoding="utf-8")
        cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            for _ in range(args.nodes):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            env = dict(os.environ, RNN_CACHE_DIR=str(root / "cache"), PYTHONUNBUFFERED="1")
            env.pop("RAY_ADDRESS", None)
            log = root / "driver.log"
            start = time.monotonic()
            with open(log, "w") as out:
                code = subprocess.call([sys.executable, "-m", "orchestrator", "run", str(spec_path),
                                        "--address", cluster.address],
                                       env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            wall = time.monotonic() - start
            # the driver: the largest descendant waited for (run's supervisor waits for its driver)
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        finally:
            cluster.shutdown()
        if code != 0:
            print(log.read_text()[-4000:], file=sys.stderr)
            print(f"the run exited with status {code}", file=sys.stderr)
            return 1
        rows = pq.read_table(root / "results" / "large-sweep" / "trials.parquet",
                             columns=["status", "finished_at"]).to_pylist()
        tracked = _tracked(root, args.tracking)
        warnings = sum("WARNING" in line for line in log.read_text().splitlines())
    finished = [r["finished_at"].timestamp() for r in rows]
    rates = window_rates(finished, args.windows)
    statuses = sorted({r["status"] for r in rows})
    figures = {
        "trials": len(rows), "statuses": statuses, "nodes": args.nodes, "wall_s": round(wall, 1),
        "rates_per_s": [round(r, 2) for r in rates], "last_over_first": round(rates[-1] / rates[0], 3),
        "driver_peak_rss_mb": round(peak_mb, 1), "tracking": args.tracking, "tracked": tracked,
        "driver_warnings": warnings,
    }
    print(f"large sweep: {len(rows)} trials ({', '.join(statuses)}) on {args.nodes} nodes x 1 CPU, "
          f"end to end {wall:.0f} s")
    print("  trials finished per second, by window of finishes: " + "  ".join(f"{r:.2f}" for r in rates))
    verdict = "ok" if rates[-1] >= 0.9 * rates[0] else "BELOW TARGET"
    print(f"  last window / first window: {rates[-1] / rates[0]:.2f}x (target >= 0.9: {verdict})")
    print(f"  driver peak memory (max RSS): {peak_mb:.0f} MB")
    if args.tracking != "off":
        print(f"  tracking {args.tracking}: " + ", ".join(f"{k} {v}" for k, v in tracked.items())
              + f"; {warnings} warnings in the driver's log")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def _tracked(root: Path, tracking: str) -> dict[str, int]:
    """How many trials each tracker holds: TensorBoard run folders, MLflow trial runs."""
    out: dict[str, int] = {}
    if tracking in ("tensorboard", "both"):
        folder = root / "results" / "large-sweep" / "tensorboard"
        out["tensorboard_runs"] = len(list(folder.iterdir())) if folder.is_dir() else 0
    if tracking in ("mlflow", "both"):
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
        exp = client.get_experiment_by_name("large-sweep")
        runs, token = 0, None
        while exp is not None:
            page = client.search_runs([exp.experiment_id], filter_string="tags.trial_id != ''",
                                      max_results=1000, page_token=token)
            runs += len(page)
            token = page.token
            if not token:
                break
        out["mlflow_runs"] = runs
    return out


if __name__ == "__main__":
    raise SystemExit(main())
