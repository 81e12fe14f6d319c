"""End to end: the same small CPU sweep serially, on two bare reused Ray actors, and through ``run``.

``python -m bench.end_to_end [--trials 8] [--steps 150] [--passes 2]`` (also the ``end-to-end``
part of ``python -m bench``). Each side is a fresh Python process timed from its start to its
exit, as a user feels it: imports, Ray's start-up, the trials, writing results and shutting down.

- ``serial``: ``Trainer.fit`` once per trial in one process, 1 torch thread (one core).
- ``bare``: the floor for a sweep on Ray. ``ray.init`` on this machine, two actors of 1 CPU and 1
  torch thread, each trial handed to whichever actor is free (actors reused), ``Trainer.fit``
  inside, then ``ray.shutdown``. No validation, no results tables, no report.
- ``run``: ``python -m orchestrator run SPEC --output DIR`` on embedded Ray with
  ``max_concurrent: 2, cpus_per_trial: 1``: everything a user gets (validation, preflight, the
  results tables, the manifest, the report).

The sides alternate within each pass (serial, bare, run; then run, bare, serial; ...), and the
figure is ``bare / run`` per pass and over the medians (target >= 0.95: the driver costs at most
5% over the floor). The bare and serial children run from this module (``--child``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from bench.dispatch import spec as dispatch_spec

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SIDES = ("serial", "bare", "run")
LABELS = {"serial": "serial (1 process, 1 thread)", "bare": "bare (2 reused Ray actors)",
          "run": "python -m orchestrator run"}
TARGET = 0.95
ACTORS = 2


def _child_serial(configs: list[dict[str, Any]], out: Path) -> None:
    import torch

    from rnn.config import RunConfig
    from rnn.train import Trainer

    torch.set_num_threads(1)
    for i, config in enumerate(configs):
        Trainer(RunConfig.from_dict(config), out / str(i), device="cpu", num_threads=1).fit()


def _child_bare(configs: list[dict[str, Any]], out: Path) -> None:
    import ray

    @ray.remote(num_cpus=1)
    class Worker:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)

        def fit(self, config: dict[str, Any], run_dir: str) -> float:
            from rnn.config import RunConfig
            from rnn.train import Trainer

            return Trainer(RunConfig.from_dict(config), run_dir, device="cpu", num_threads=1).fit().train_time_s

    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    try:
        free = [Worker.remote() for _ in range(ACTORS)]  # type: ignore[attr-defined]
        running: dict[Any, Any] = {}
        queue = list(enumerate(configs))
        while queue or running:
            while queue and free:
                i, config = queue.pop(0)
                actor = free.pop()
                running[actor.fit.remote(config, str(out / str(i)))] = actor
            done, _ = ray.wait(list(running), num_returns=1)
            ray.get(done[0])
            free.append(running.pop(done[0]))
    finally:
        ray.shutdown()


def _time_child(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed


def measure(trials: int = 8, steps: int = 800, passes: int = 2, sides: Sequence[str] = SIDES) -> dict[str, Any]:
    """Time ``sides`` ``passes`` times, alternating their order; see the module doc."""
    from orchestrator.spec import load_job, trial_config

    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "PYTHONPATH": str(REPO)}
    times: dict[str, list[float]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        root = Path(tmp)
        spec_path = root / "e2e.yaml"
        spec_path.write_text(yaml.safe_dump(dispatch_spec(trials, steps), sort_keys=False), encoding="utf-8")
        configs = root / "configs.json"
        configs.write_text(json.dumps([trial_config(t) for t in load_job(spec_path).trials]), encoding="utf-8")
        for p in range(passes):
            order = tuple(sides) if p % 2 == 0 else tuple(reversed(sides))
            for side in order:
                out = root / f"{side}-{p}"
                if side == "run":
                    argv = [sys.executable, "-m", "orchestrator", "run", str(spec_path), "--output", str(out)]
                else:
                    argv = [sys.executable, "-m", "bench.end_to_end", "--child", side, str(configs), str(out)]
                times[side].append(_time_child(argv, env))
                log.info("pass %d %s: %.1fs", p + 1, side, times[side][-1])
    medians = {side: statistics.median(ts) for side, ts in times.items()}
    return {
        "trials": trials,
        "steps_per_trial": steps,
        "passes": passes,
        "times_s": times,
        "median_s": medians,
        "ratio_per_pass": [b / r for b, r in zip(times["bare"], times["run"], strict=True)],
        "ratio": medians["bare"] / medians["run"],
        "serial_over_run": medians["serial"] / medians["run"] if "serial" in medians else None,
        "target": TARGET,
    }


def format_end_to_end(d: dict[str, Any]) -> str:
    """The figures as a few lines under the ratio table."""
    per_pass = lambda side: " / ".join(f"{t:.1f}" for t in d["times_s"][side])  # noqa: E731
    verdict = "ok" if d["ratio"] >= d["target"] else "BELOW TARGET"
    return "\n".join([
        f"end to end: {d['trials']} trials x {d['steps_per_trial']} steps, each side a fresh process, "
        f"{d['passes']} passes alternating",
        *(f"  {LABELS[side]:<32}{per_pass(side)} s" for side in d["times_s"]),
        f"  bare / run {d['ratio']:.2f}x over the medians (per pass "
        + ", ".join(f"{r:.2f}" for r in d["ratio_per_pass"])
        + f"; target >= {d['target']}: {verdict})",
    ] + ([f"  serial / run {d['serial_over_run']:.2f}x"] if "serial" in d["times_s"] else []))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.end_to_end", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--steps", type=int, default=800, help="steps per trial (default 800: about 8 s each on the dev VM)")
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--sides", default=",".join(SIDES),
                   help="comma-separated subset of serial,bare,run (bare and run are needed)")
    p.add_argument("--child", nargs=3, metavar=("SIDE", "CONFIGS", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.child:
        side, configs, out = args.child
        child = {"serial": _child_serial, "bare": _child_bare}[side]
        child(json.loads(Path(configs).read_text(encoding="utf-8")), Path(out))
        return 0
    sides = [s for s in args.sides.split(",") if s]
    if not {"bare", "run"} <= set(sides) or not set(sides) <= set(SIDES):
        p.error(f"--sides must include bare and run, from {', '.join(SIDES)}")
    print(format_end_to_end(measure(args.trials, args.steps, args.passes, sides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
