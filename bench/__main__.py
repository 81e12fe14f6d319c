"""``python -m bench``: engine-vs-baseline ratios, sweep dispatch and bookkeeping figures, as a table and JSON.

Every line is a ratio of two things timed alternately in this run; see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

PARTS = ("cells", "trainer", "min-cells", "weight-drop", "dispatch", "end-to-end", "via-run", "bookkeeping", "compile")
#: What runs without --only: "compile" (eager vs torch.compile, minutes of cold compiles) only on request.
DEFAULT_PARTS = tuple(p for p in PARTS if p != "compile")
OUT_DIR = Path(__file__).resolve().parent / "out"

#: Per-device defaults: (timed steps per block, rounds, warm-up steps, dispatch steps per trial).
DEFAULTS = {"cpu": (2, 5, 2, 150), "cuda": (20, 6, 10, 150), "mps": (5, 4, 3, 150)}
#: Trainer comparison: windows per run (the first is warm-up and dropped).
TRAINER_WINDOWS = 4


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps (default auto)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny shape, one step per block and a 2-trial sweep: checks the harness runs; "
                        "figures mean nothing")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per block in ratios 1-2 (default 2 on CPU, 20 on CUDA); "
                        "ratio 3's windows are twice that")
    p.add_argument("--rounds", type=int, default=None,
                   help="alternations of engine and baseline in ratios 1-2 (default 5 CPU, 6 CUDA); "
                        "ratio 3 runs one fewer")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per side before timing")
    p.add_argument("--full-shapes", action="store_true",
                   help="on the CPU, use the full batch sizes (slow: 10-20 s a step)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on the CPU, see docs/benchmarks.md; "
                        "torch's default elsewhere)")
    p.add_argument("--amp", default="auto", help="the engine's amp setting (auto | off | bf16 | fp16; default auto)")
    p.add_argument("--only", action="append", choices=PARTS,
                   help="run only these parts (repeatable; 'compile' runs only when named here)")
    p.add_argument("--skip", action="append", choices=PARTS, default=[], help="skip these parts (repeatable)")
    p.add_argument("--dispatch-trials", type=int, default=8, help="trials in the dispatch sweep (default 8)")
    p.add_argument("--dispatch-steps", type=int, default=None, help="training steps per dispatch trial (default 150)")
    p.add_argument("--out", type=Path, default=None, help="JSON output (default bench/out/bench-<date>.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO (progress of every part)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if argv is None:
        # The CLI (not a test calling main([...])): restart once with steady allocator tunables.
        from bench.alloc import reexec_with_tunables

        reexec_with_tunables(sys.argv[1:])
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import torch

    from bench.alloc import allocator_settings
    from bench.common import QUICK_SHAPES, SHAPES, format_table, machine, write_json
    from bench.engine import compare_cells, compare_heartbeat, compare_trainer, prepare
    from rnn.device import detect_device

    device = detect_device(args.device)
    # One thread on the CPU by default: the ratios compare code paths, not thread scaling, and on
    # a shared machine a 2-thread OpenMP step stalls whenever a sibling thread is descheduled
    # (10-20x slower steps on the 2-core dev VM while other jobs ran; 1 thread stayed steady).
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    block, rounds, warmup, dispatch_steps = DEFAULTS.get(device.type, DEFAULTS["cpu"])
    if args.quick:
        block, rounds, warmup, dispatch_steps = 1, 1, 1, 4
    block = args.steps or block
    rounds = args.rounds or rounds
    warmup = args.warmup if args.warmup is not None else warmup
    dispatch_steps = args.dispatch_steps or dispatch_steps
    dispatch_trials = 2 if args.quick and args.dispatch_trials == 8 else args.dispatch_trials
    parts = [p for p in (args.only or DEFAULT_PARTS) if p not in args.skip]

    meta = machine(device)
    meta["allocator"] = allocator_settings()
    settings = {"steps_per_block": block, "rounds": rounds, "warmup": warmup, "amp": args.amp,
                "quick": args.quick, "full_shapes": args.full_shapes, "parts": parts, "threads": threads,
                "argv": list(argv) if argv is not None else sys.argv[1:]}
    print(f"bench on {meta['device']} ({meta['device_name']}); CPU {meta['cpu_model']} x{meta['cpu_count']}, "
          f"{meta['torch_threads']} torch threads; torch {meta['torch_version']}; {meta['date']}")
    print(f"allocator: {meta['allocator']}")
    print(f"settings: {block} timed step(s) per block, {rounds} round(s), {warmup} warm-up step(s); "
          f"parts {', '.join(parts)}")
    t0 = time.perf_counter()

    ratios = []
    for base in (QUICK_SHAPES if args.quick else SHAPES) if {"cells", "trainer", "weight-drop"} & set(parts) else ():
        shape = base.on(device, args.full_shapes)
        if shape.batch_size != base.batch_size:
            print(f"  {shape.name}: batch {base.batch_size} -> {shape.batch_size} on the CPU "
                  "(--full-shapes for the full batch)")
        data = prepare(shape, device)
        if "cells" in parts:
            ratios += compare_cells(shape, device, data, amp=args.amp, warmup=warmup, block=block, rounds=rounds)
        if "trainer" in parts:
            ratios.append(compare_trainer(shape, device, data, amp=args.amp, window=2 * block,
                                          windows=TRAINER_WINDOWS, rounds=max(1, rounds - 1)))
            ratios.append(compare_heartbeat(shape, device, data, amp=args.amp, window=2 * block,
                                            windows=TRAINER_WINDOWS, rounds=max(1, rounds - 1)))
        if "weight-drop" in parts:
            from bench.weight_drop import compare_weight_drop

            ratios.append(compare_weight_drop(shape, device, data, amp=args.amp, warmup=warmup, block=block,
                                              rounds=rounds))
        del data
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "min-cells" in parts:
        from bench.min_cells import compare_min_cells

        # The char-rnn shape (E 128, H 512, 2 layers, B 8 on the CPU) at T 100 and 256.
        shape = (QUICK_SHAPES[0] if args.quick else SHAPES[1]).on(device, args.full_shapes)
        ratios += compare_min_cells(shape, device, amp=args.amp, warmup=warmup, block=block, rounds=rounds,
                                    seq_lens=(8, 16) if args.quick else (100, 256))
    if ratios:
        print()
        print(format_table(ratios))

    dispatch: Optional[dict[str, Any]] = None
    if "dispatch" in parts:
        # Each part that needs Ray or the spec layer imports it when it runs: the cells and
        # trainer parts run on a bare GPU image without either (bench/gpu.sh).
        from bench.dispatch import format_dispatch
        from bench.dispatch import measure as measure_dispatch

        dispatch = measure_dispatch(trials=dispatch_trials, steps=dispatch_steps)
        print()
        print(format_dispatch(dispatch))

    end_to_end: Optional[dict[str, Any]] = None
    if "end-to-end" in parts:
        from bench.end_to_end import format_end_to_end
        from bench.end_to_end import measure as measure_end_to_end

        # --quick: 2 trials of a few steps, one pass; the full line runs 8 trials of 800 steps twice
        # on each side (about 5 minutes on the 2-core dev VM).
        end_to_end = (measure_end_to_end(trials=2, steps=dispatch_steps, passes=1) if args.quick
                      else measure_end_to_end(trials=dispatch_trials))
        print()
        print(format_end_to_end(end_to_end))

    via_run: Optional[dict[str, Any]] = None
    if "via-run" in parts:
        from bench.via_run import format_via_run
        from bench.via_run import measure as measure_via_run

        via_run = measure_via_run(batch_sizes=(16,), rounds=1, measure_steps=3) if args.quick else measure_via_run()
        print()
        print(format_via_run(via_run))

    bookkeeping: Optional[dict[str, Any]] = None
    if "bookkeeping" in parts:
        from bench.bookkeeping import format_bookkeeping
        from bench.bookkeeping import measure as measure_bookkeeping

        # --quick: 10/50/100 trials, checks the harness only; the full run commits 10,000 (about a minute).
        bookkeeping = measure_bookkeeping((10, 50, 100), window=10) if args.quick else measure_bookkeeping()
        print()
        print(format_bookkeeping(bookkeeping))

    compiled: Optional[list[dict[str, Any]]] = None
    if "compile" in parts:
        from bench.compile import CASES, CHAR_RNN, QUICK_CASES, format_compile
        from bench.compile import measure as measure_compile

        shape = QUICK_SHAPES[0] if args.quick else CHAR_RNN if device.type == "cpu" else SHAPES[1]
        figures = measure_compile(QUICK_CASES if args.quick else tuple(CASES), shape, device,
                                  block=block, rounds=rounds, warmup=warmup)
        compiled = [f.to_dict() for f in figures]
        print()
        print(format_compile(figures))

    elapsed = time.perf_counter() - t0
    print(f"\n{elapsed:.0f}s. Ratios compare sides timed alternately in this run; on a shared machine the"
          " absolute figures are noisy.")
    out = args.out or OUT_DIR / f"bench-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    payload = {"machine": meta, "settings": settings, "elapsed_s": elapsed,
               "ratios": [r.to_dict() for r in ratios], "dispatch": dispatch, "end_to_end": end_to_end,
               "via_run": via_run,
               "bookkeeping": bookkeeping, "compile": compiled}
    print(f"wrote {write_json(out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
