"""Throughput through ``orchestrator run`` vs in-process: does a throughput trial measure the model or the actor?

The same ``kind: throughput`` spec (a plain LSTM, E 64, H 256, T 25, ``cpus_per_trial: 2``) is
measured two ways, alternately, ``rounds`` times each:

- **in-process**: :func:`rnn.throughput.measure_throughput` in this process with 2 torch threads,
  what ``python -m bench.jobs`` does;
- **via run**: :func:`orchestrator.run.runner.run_job` on local Ray (one actor reserving 2 CPUs),
  samples/s read back from ``throughput.parquet``. Each round is one ``run_job`` (Ray's start-up
  is outside the timed steps either way: only the engine's own step times count).

The line is ``via run / in-process`` per batch size, each side's figure the median over rounds
(target >= 0.9x). Rounds alternate which side goes first.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

log = logging.getLogger(__name__)

CPUS = 2
TARGET = 0.9


def spec(batch_sizes: list[int], measure_steps: int) -> dict[str, Any]:
    """The issue's spec: a plain LSTM E64 H256 T25 on the CPU, one trial, 2 CPUs."""
    return {
        "name": "bench-via-run",
        "kind": "throughput",
        "data": {"corpus": "builtin", "level": "char", "seq_len": 25},
        "model": {"cell": "lstm", "embedding_dim": 64, "hidden_size": 256, "num_layers": 1, "dropout": 0.0},
        "train": {"optimizer": "adamw", "amp": "off", "device": "cpu"},
        "throughput": {"batch_sizes": batch_sizes, "warmup_steps": 5, "measure_steps": measure_steps},
        "resources": {"cpus_per_trial": CPUS, "gpus_per_trial": 0, "max_concurrent": 1, "max_retries": 0},
        "output": "results",
    }


def measure(batch_sizes: tuple[int, ...] = (64, 256), rounds: int = 3, measure_steps: int = 30) -> dict[str, Any]:
    """Both sides, alternately; returns samples/s per side and batch size, and the ratios."""
    from orchestrator.results import ResultsStore
    from orchestrator.run.runner import run_job
    from orchestrator.spec import load_job
    from rnn.throughput import measure_throughput

    sides: dict[str, dict[int, list[float]]] = {"in_process": {}, "via_run": {}}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="bench-via-run-") as tmp:
        root = Path(tmp)
        spec_path = root / "via_run.yaml"
        spec_path.write_text(yaml.safe_dump(spec(list(batch_sizes), measure_steps), sort_keys=False), encoding="utf-8")
        job = load_job(spec_path)
        trial = job.trials[0]

        def in_process() -> None:
            try:
                rows = measure_throughput(trial.run_config, trial.throughput_config, num_threads=CPUS,
                                          cache_dir=root / "cache")
            finally:
                torch.set_num_threads(threads)
            for r in rows:
                sides["in_process"].setdefault(r.batch_size, []).append(r.samples_per_s or float("nan"))

        def via_run(i: int) -> None:
            outcome = run_job(job, output=str(root / f"out{i}"))
            if outcome.exit_code != 0:
                raise RuntimeError(f"the via-run throughput job failed (exit {outcome.exit_code})")
            for r in ResultsStore(outcome.job_dir).read_throughput().to_pylist():
                sides["via_run"].setdefault(r["batch_size"], []).append(r["samples_per_s"] or float("nan"))

        for i in range(rounds):
            if i % 2 == 0:
                in_process()
                via_run(i)
            else:
                via_run(i)
                in_process()
    med = {k: {b: statistics.median(v) for b, v in d.items()} for k, d in sides.items()}
    return {
        "batch_sizes": list(batch_sizes), "rounds": rounds, "cpus_per_trial": CPUS, "target": TARGET,
        "samples_per_s": sides, "median": med,
        "ratio": {b: med["via_run"][b] / med["in_process"][b] for b in batch_sizes},
    }


def format_via_run(d: dict[str, Any]) -> str:
    """One line per batch size."""
    lines = [f"throughput via run / in-process: plain LSTM E64 H256 T25, cpus_per_trial {d['cpus_per_trial']},"
             f" {d['rounds']} alternating rounds, medians"]
    for b in d["batch_sizes"]:
        r = d["ratio"][b]
        lines.append(f"  B {b:>4}: via run {d['median']['via_run'][b]:,.0f} samples/s, in-process"
                     f" {d['median']['in_process'][b]:,.0f} samples/s: {r:.2f}x"
                     f" (target >= {d['target']}x: {'ok' if r >= d['target'] else 'BELOW TARGET'})")
    return "\n".join(lines)
