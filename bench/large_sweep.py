"""A large sweep, simulated: thousands of trivial trials through ``run`` on a multi-node Cluster.

``python -m bench.large_sweep [--trials 2000] [--nodes 4]`` starts a ``ray.cluster_utils.Cluster``
(a head with 0 CPUs plus ``--nodes`` worker nodes of 1 CPU each, all on loopback), writes a spec
of ``--trials`` trivial trials (a 2-step char LSTM of 8 units on a 20 KB corpus, one trial per
seed) and runs ``python -m orchestrator run SPEC --address CLUSTER`` against it as a user would.

It prints trials finished per second in equal windows of finished trials (from the first trial's
finish, so actor start-up is outside), the ratio of the last window's rate to the first one's
(target >= 0.9: nothing in the driver grows with the sweep), the end-to-end wall time, and the
driver process's peak resident memory and CPU time. Only the Cluster this script started is stopped.

``--tracking off,tensorboard,mlflow,both --rounds 3`` runs the settings in turn on the same
cluster, three times over (each round starting one setting later), and prints each setting's
medians against the first's: the trackers' cost, against a baseline timed in the same run. MLflow
writes to a SQLite database beside each run's results, made (and migrated to the installed
MLflow's schema) before the run is timed, as a user's ``mlflow.db`` exists before most of their
sweeps; ``--new-mlflow-db`` leaves its making to the run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from bench.big_corpus import PeakMemory

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
    p.add_argument("--tracking", type=_settings, default=["off"], metavar="SETTING[,SETTING...]",
                   help="off, tensorboard, mlflow (a SQLite database beside the results) or both; several, "
                        "comma-separated, are run in turn on the same cluster and compared with the first")
    p.add_argument("--rounds", type=int, default=1, help="run the settings in turn this many times (medians)")
    p.add_argument("--new-mlflow-db", action="store_true",
                   help="let each run make its MLflow database (MLflow's migrations, about a second of CPU, "
                        "inside the timing); by default it is made before the run is timed")
    args = p.parse_args(argv)

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-large-sweep-") as tmp:
        root = Path(tmp)
        import pydoc_data.topics

        corpus = root / "corpus.txt"
        corpus.write_text("".join(pydoc_data.topics.topics.values())[:20_000], encoding="utf-8")
        cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            for _ in range(args.nodes):
                cluster.add_node(num_cpus=1)
            cluster.wait_for_nodes()
            for n in range(args.rounds):
                # each round starts one setting later: a run can slow as it goes (tracking off took
                # 50-52 s in the first rounds of one run and 63-65 s in its last), and a fixed
                # order would charge that to the settings that come late in every round
                for tracking in _rotated(args.tracking, n):
                    figures = _one_run(root / f"{n}-{tracking}", corpus, cluster.address, args.trials, tracking,
                                       args.windows, args.new_mlflow_db)
                    if figures is None:
                        return 1
                    runs.append(figures)
                    _print_run(figures, args.nodes)
        finally:
            cluster.shutdown()
    if len(runs) > 1:
        _print_comparison(runs, args.tracking)
    if args.out:
        args.out.write_text(json.dumps(runs[0] if len(runs) == 1 else runs, indent=2) + "\n")
    return 0


def _settings(text: str) -> list[str]:
    settings = [t.strip() for t in text.split(",")]
    for t in settings:
        if t not in ("off", "tensorboard", "mlflow", "both"):
            raise argparse.ArgumentTypeError(f"{t!r}: not one of off, tensorboard, mlflow, both")
    return settings


def _rotated(settings: list[str], n: int) -> list[str]:
    k = n % len(settings)
    return settings[k:] + settings[:k]


def _one_run(root: Path, corpus: Path, address: str, trials: int, tracking: str,
             windows: int, new_mlflow_db: bool = False) -> Optional[dict[str, Any]]:
    """One ``run`` of the sweep against the cluster, in a folder of its own: its figures (None: it failed)."""
    import pyarrow.parquet as pq

    root.mkdir()
    spec_path = root / "large.yaml"
    mlflow_uri = f"sqlite:///{root / 'mlflow.db'}" if tracking in ("mlflow", "both") else None
    trackers = {"tensorboard": tracking in ("tensorboard", "both"), "mlflow": mlflow_uri}
    spec_path.write_text(yaml.safe_dump(spec(trials, corpus, root / "results", trackers)), encoding="utf-8")
    if mlflow_uri and not new_mlflow_db:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=mlflow_uri).search_experiments(max_results=1)  # makes the database
    env = dict(os.environ, RNN_CACHE_DIR=str(root.parent / "cache"), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    log = root / "driver.log"
    start = time.monotonic()
    with open(log, "w") as out:
        driver = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(spec_path), "--address", address],
                                  env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        memory = PeakMemory(driver.pid)  # the high-water marks, from /proc: a child's ru_maxrss starts at
        # this process's size when it was forked, which can be more than the driver's (MLflow imported here)
        # the CPU time: run's supervisor waits for its driver, the driver for its trackers' process
        _, status, usage = os.wait4(driver.pid, 0)
        memory.stop()
    wall = time.monotonic() - start
    driver.returncode = code = os.waitstatus_to_exitcode(status)
    if code != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        print(f"the run exited with status {code}", file=sys.stderr)
        return None
    rows = pq.read_table(root / "results" / "large-sweep" / "trials.parquet",
                         columns=["status", "finished_at"]).to_pylist()
    lines = log.read_text().splitlines()
    tracker_cpu = [float(m.group(1)) for line in lines
                   if (m := re.search(r"trackers' process used ([0-9.]+) s of CPU", line))]
    rates = window_rates([r["finished_at"].timestamp() for r in rows], windows)
    return {
        "trials": len(rows), "statuses": sorted({r["status"] for r in rows}), "wall_s": round(wall, 1),
        "rates_per_s": [round(r, 2) for r in rates], "mean_rate_per_s": round(statistics.fmean(rates), 2),
        "last_over_first": round(rates[-1] / rates[0], 3),
        "driver_peak_rss_mb": round(max(memory.of("driver"), default=0.0), 1),
        "trackers_peak_rss_mb": round(max(memory.of("trackers"), default=0.0), 1),
        "driver_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),  # with its children's (the trackers')
        "tracking": tracking, "tracked": _tracked(root, tracking),
        "mlflow_db": ("new" if new_mlflow_db else "existing") if mlflow_uri else None,
        "driver_warnings": sum("WARNING" in line for line in lines),
        "tracker_cpu_s": tracker_cpu[0] if tracker_cpu else None,
    }


def _print_run(f: dict[str, Any], nodes: int) -> None:
    rates = f["rates_per_s"]
    print(f"large sweep: {f['trials']} trials ({', '.join(f['statuses'])}) on {nodes} nodes x 1 CPU, "
          f"tracking {f['tracking']}, end to end {f['wall_s']:.0f} s")
    print("  trials finished per second, by window of finishes: " + "  ".join(f"{r:.2f}" for r in rates))
    verdict = "ok" if rates[-1] >= 0.9 * rates[0] else "BELOW TARGET"
    print(f"  last window / first window: {f['last_over_first']:.2f}x (target >= 0.9: {verdict})")
    print(f"  driver peak memory (VmHWM): {f['driver_peak_rss_mb']:.0f} MB; "
          f"CPU time {f['driver_cpu_s']:.1f} s (with its children's)")
    if f["tracking"] != "off":
        cpu = f["tracker_cpu_s"]
        print(f"  tracking {f['tracking']}: " + ", ".join(f"{k} {v}" for k, v in f["tracked"].items())
              + f"; the trackers' process used {cpu if cpu is not None else float('nan'):.1f} s of CPU"
              + f" and {f['trackers_peak_rss_mb']:.0f} MB at its peak"
              + f"; {f['driver_warnings']} warnings in the driver's log")


def _print_comparison(runs: list[dict[str, Any]], settings: list[str]) -> None:
    """Medians per setting, and each against the first setting's (the baseline, timed in the same rounds)."""
    base = settings[0]

    def median(setting: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["tracking"] == setting)

    rounds = sum(r["tracking"] == base for r in runs)
    print(f"\nmedians of {rounds} rounds, each setting against {base} (in turn on one cluster, each round "
          "starting one setting later):")
    print(f"  {'tracking':12} {'end to end':>10} {'trials/s':>9} {'last/first':>10} {'driver CPU':>10} "
          f"{'trackers CPU':>12}   against {base}")
    for setting in settings:
        wall, rate = median(setting, "wall_s"), median(setting, "mean_rate_per_s")
        cpu = [r["tracker_cpu_s"] for r in runs if r["tracking"] == setting and r["tracker_cpu_s"] is not None]
        against = "" if setting == base else (f"{wall / median(base, 'wall_s') - 1:+.1%} time, "
                                             f"{rate / median(base, 'mean_rate_per_s') - 1:+.1%} trials/s")
        print(f"  {setting:12} {wall:>9.1f}s {rate:>9.1f} {median(setting, 'last_over_first'):>10.2f} "
              f"{median(setting, 'driver_cpu_s'):>9.1f}s {statistics.median(cpu) if cpu else 0.0:>11.1f}s   {against}")


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
