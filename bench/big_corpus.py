"""A corpus of enwik8's size through ``run``: memory, evaluation's share and time to the first step.

``python -m bench.big_corpus [--mb 100] [--steps 250]`` writes a ``--mb`` MB text (Tiny
Shakespeare's lines in a seeded random order, so it has that corpus's 65 characters and no
repeated 100-character window to memorise), then runs ``python -m orchestrator run`` three
times as a user would, each with 2 trials at once (1 CPU each) of the default model (char level,
2x512 LSTM, E 128, batch 64 x 100), default evaluation settings (``eval_every`` 250,
``data.val_max_chars``) and a fresh id cache for the first run only:

1. **cold**: 1 step per trial on the big corpus, ids not yet cached (what the first trials pay);
2. **warm**: ``--steps`` steps per trial on the big corpus, ids cached;
3. **baseline**: the same trials on the 1 MB builtin corpus: what the model, PyTorch and Ray
   cost a trainer without a big corpus.

With ``--prep`` it instead times data preparation in this process, per level (char, BPE, word):
``rnn.data.prepare_data`` on the ``--mb`` MB corpus with an empty cache (the tokenizer trained and
both splits encoded, what the first trial on a machine pays) and again (what every later trial
pays); ``plan``'s per-MB rates come from it.

Each process's peak resident memory is the kernel's high-water mark (``VmHWM`` in
``/proc/<pid>/status``), read every 0.2 s while the run lasts. It prints, against the issue's
targets: the driver's peak (the orchestrator's processes; target <= 500 MB); each trainer's peak
on the big corpus over (the baseline trainer's peak + the token ids' bytes) (target <= 1.5x);
evaluation's share of ``train_time_s`` in the warm run (target <= 20%); and the time from a trial
starting to its first step (the driver's ``started`` to ``running on`` lines; target <= 30 s once
the ids are cached). Only the processes this script started are ever read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from orchestrator.processes import children

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"driver_mb": 500.0, "trainer_over_budget": 1.5, "eval_share": 0.20, "first_step_s": 30.0}
_LINE = re.compile(r"^(\d\d:\d\d:\d\d) \w+ +\[\d+/\d+ (\w+) [^\]]*\] (started|running on)")


def write_corpus(path: Path, mb: int, source: Path, seed: int = 0) -> int:
    """``mb`` MB of ``source``'s lines in a seeded random order; returns the characters written."""
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(seed)
    target, written = mb * 1_000_000, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            block = "".join(rng.choices(lines, k=10_000))
            f.write(block)
            written += len(block)
    return written


def spec(name: str, corpus: str, steps: int, output: Path) -> dict[str, Any]:
    """Two trials (seeds) at once, 1 CPU each, the default model and evaluation settings."""
    return {
        "name": name,
        "data": {"corpus": corpus, "level": "char"},
        "train": {"max_steps": steps, "device": "cpu"},
        "sweep": {"seeds": [0, 1]},
        "resources": {"cpus_per_trial": 1, "max_concurrent": 2, "max_retries": 0},
        "output": str(output),
    }


class PeakMemory:
    """The high-water marks (MB) of a process tree's processes, by kind, polled from ``/proc``."""

    def __init__(self, root_pid: int, period_s: float = 0.2) -> None:
        self.root_pid, self.period_s = root_pid, period_s
        self.peaks: dict[int, tuple[str, float]] = {}  # pid -> (kind, VmHWM MB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def of(self, kind: str) -> list[float]:
        return sorted((mb for k, mb in self.peaks.values() if k == kind), reverse=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in _descendants(self.root_pid):
                status = _read(f"/proc/{pid}/status")
                cmd = _read(f"/proc/{pid}/cmdline").replace("\0", " ")
                hwm = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
                if hwm is None:
                    continue
                kind = ("trainer" if cmd.startswith("ray::Trainer") else
                        "driver" if "orchestrator run" in cmd else
                        "trackers" if "orchestrator.track.writer" in cmd else "other")
                self.peaks[pid] = (kind, max(int(hwm.group(1)) / 1024, self.peaks.get(pid, ("", 0.0))[1]))
            self._stop.wait(self.period_s)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:  # the process ended between the listing and the read
        return ""


def _descendants(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children(pid))
    return out


def run(spec_path: Path, env: dict[str, str], log: Path) -> tuple[int, float, PeakMemory]:
    """``python -m orchestrator run SPEC``; its exit status, wall time and memory peaks."""
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "run", str(spec_path)],
                                env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        memory = PeakMemory(proc.pid)
        code = proc.wait()
    memory.stop()
    return code, time.monotonic() - start, memory


def first_step_s(log: Path) -> list[float]:
    """Per trial, seconds from ``started`` to ``running on`` (set-up done, the first step next)."""
    started: dict[str, dt.datetime] = {}
    out = []
    for line in log.read_text().splitlines():
        m = _LINE.match(line)
        if m is None:
            continue
        at = dt.datetime.strptime(m.group(1), "%H:%M:%S")
        if m.group(3) == "started":
            started[m.group(2)] = at
        elif m.group(2) in started:
            out.append((at - started.pop(m.group(2))).total_seconds() % 86400)
    return out


def prep_seconds(corpus: Path, cache: Path) -> dict[str, tuple[float, float]]:
    """Per level, seconds of ``prepare_data`` with an empty cache, then with it filled."""
    from rnn.config import DataConfig
    from rnn.data import prepare_data

    out = {}
    for level in ("char", "bpe", "word"):
        cfg = DataConfig(corpus=str(corpus), level=level)
        times = []
        for _ in range(2):
            start = time.perf_counter()
            prepare_data(cfg, cache_dir=cache / level)
            times.append(time.perf_counter() - start)
        out[level] = (times[0], times[1])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.big_corpus", description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=100, help="corpus size in MB (default 100, enwik8's)")
    p.add_argument("--steps", type=int, default=250, help="steps per trial in the warm run (default 250: "
                   "one evaluation at the default eval_every)")
    p.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare.txt",
                   help="the text whose lines make the corpus (default ../shared/data/tinyshakespeare.txt)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("--prep", action="store_true", help="time data preparation per level instead (in this process)")
    args = p.parse_args(argv)
    if args.prep:
        with tempfile.TemporaryDirectory(prefix="bench-big-corpus-") as tmp:
            corpus = Path(tmp) / "big.txt"
            write_corpus(corpus, args.mb, args.source)
            for level, (first, later) in prep_seconds(corpus, Path(tmp) / "cache").items():
                print(f"{level}: first encode {first:.2f} s ({first / args.mb:.3f} s/MB), each later trial "
                      f"{later:.2f} s ({later / args.mb:.3f} s/MB)")
        return 0

    import pyarrow.parquet as pq

    figures: dict[str, Any] = {"mb": args.mb, "steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="bench-big-corpus-") as tmp:
        root = Path(tmp)
        corpus = root / "big.txt"
        figures["chars"] = write_corpus(corpus, args.mb, args.source)
        env = dict(os.environ, RNN_CACHE_DIR=str(root / "cache"), PYTHONUNBUFFERED="1",
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
        env.pop("RAY_ADDRESS", None)
        runs: dict[str, tuple[float, PeakMemory, Path]] = {}
        for name, corpus_name, steps in (("cold", str(corpus), 1), ("warm", str(corpus), args.steps),
                                         ("baseline", "builtin", args.steps)):
            spec_path = root / f"{name}.yaml"
            spec_path.write_text(yaml.safe_dump(spec(name, corpus_name, steps, root / "results")), encoding="utf-8")
            log = root / f"{name}.log"
            code, wall, memory = run(spec_path, env, log)
            if code != 0:
                print(log.read_text()[-4000:], file=sys.stderr)
                print(f"the {name} run exited with status {code}", file=sys.stderr)
                return 1
            runs[name] = (wall, memory, log)
            print(f"{name}: {wall:.0f} s end to end")
        ids_mb = sum(f.stat().st_size for f in (root / "cache").rglob("ids-*.npy")) / 2**20
        rows = pq.read_table(root / "results" / "warm" / "trials.parquet",
                             columns=["eval_time_s", "train_time_s", "val_coverage"]).to_pylist()
        starts = {k: first_step_s(log) for k, (_, _, log) in runs.items()}

    baseline = max(runs["baseline"][1].of("trainer"))
    figures.update({
        "ids_mb": round(ids_mb, 1),
        "driver_peak_mb": {k: round(max(m.of("driver")), 1) for k, (_, m, _) in runs.items()},
        "trainer_peak_mb": {k: [round(x, 1) for x in m.of("trainer")] for k, (_, m, _) in runs.items()},
        "first_step_s": starts,
        "eval_share": [round(r["eval_time_s"] / r["train_time_s"], 3) for r in rows],
        "val_coverage": [r["val_coverage"] for r in rows],
        "wall_s": {k: round(w, 1) for k, (w, _, _) in runs.items()},
    })
    over = [x / (baseline + ids_mb) for x in runs["warm"][1].of("trainer")]
    figures["trainer_over_budget"] = [round(x, 2) for x in over]

    def verdict(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    driver = max(figures["driver_peak_mb"]["cold"], figures["driver_peak_mb"]["warm"])
    print(f"big corpus: {figures['chars']:,} characters, char level, 2 trials at once x 1 CPU, "
          f"{args.steps} steps each (warm run)")
    print(f"  driver peak RSS: cold {figures['driver_peak_mb']['cold']:.0f} MB, warm "
          f"{figures['driver_peak_mb']['warm']:.0f} MB, builtin corpus {figures['driver_peak_mb']['baseline']:.0f} MB "
          f"(target <= {TARGETS['driver_mb']:.0f}: {verdict(driver <= TARGETS['driver_mb'])})")
    print(f"  trainer peak RSS: warm {', '.join(f'{x:.0f}' for x in runs['warm'][1].of('trainer'))} MB; "
          f"builtin corpus {baseline:.0f} MB + token ids {ids_mb:.0f} MB -> "
          f"{', '.join(f'{x:.2f}x' for x in over)} "
          f"(target <= {TARGETS['trainer_over_budget']}x: {verdict(max(over) <= TARGETS['trainer_over_budget'])})")
    share = max(figures["eval_share"])
    print(f"  evaluation's share of train_time_s: {', '.join(f'{x:.1%}' for x in figures['eval_share'])} "
          f"(each evaluation read {min(figures['val_coverage']):.2%} of the held-out split; "
          f"target <= {TARGETS['eval_share']:.0%}: {verdict(share <= TARGETS['eval_share'])})")
    warm_first = figures["first_step_s"]["warm"]
    print(f"  started -> first step: cold {figures['first_step_s']['cold']} s, warm {warm_first} s "
          f"(target <= {TARGETS['first_step_s']:.0f} s once cached: "
          f"{verdict(bool(warm_first) and max(warm_first) <= TARGETS['first_step_s'])})")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
