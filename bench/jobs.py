"""Run a ``kind: throughput`` job spec through the engine directly, without Ray, and print a table.

    python -m bench.jobs jobs/throughput_sweep.yaml [--device cuda] [--out FILE.json]

Each trial of the spec (sweep included) goes to :func:`rnn.throughput.measure_throughput` in
this process. Besides the measured rows, the table shows the memory estimate the CPU guard
uses (:func:`rnn.throughput.estimate_step_memory`) next to the measured peak, so the estimate
can be checked on a GPU, where the peak is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from bench import specs
from bench.common import machine, write_json


def load_trials(spec_path: str) -> list[tuple[str, dict[str, Any], Any, Any]]:
    """``(trial_id, overrides, RunConfig, ThroughputConfig)`` for each trial of a throughput spec.

    Validated and expanded by the spec layer where pydantic is installed; on a bare GPU image read
    plainly, sweep included (see :mod:`bench.specs`).
    """
    return [(t.trial_id, t.overrides, t.run_config, t.throughput_config)
            for t in specs.load_trials(spec_path, "throughput")]


def run_spec(spec_path: str, device: Optional[str]) -> list[dict[str, Any]]:
    """Every trial's rows as dicts, with ``trial_id``, the swept values and the memory estimate."""
    from rnn.data import prepare_data
    from rnn.models import build_model
    from rnn.throughput import estimate_step_memory, measure_throughput

    out = []
    for trial_id, overrides, cfg, tp in load_trials(spec_path):
        # Vocabulary and parameter count for the estimate column (cheap: char level, CPU).
        vocab = prepare_data(cfg.data, "cpu").vocab_size
        params = build_model(cfg.model, vocab).num_parameters()
        for row in measure_throughput(cfg, tp, device=device):
            d = row.to_dict()
            d["estimate_mb"] = estimate_step_memory(cfg.model, vocab, row.batch_size, cfg.data.seq_len, params) / 2**20
            out.append({"trial_id": trial_id, "overrides": overrides, **d})
    return out


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table, one line per (trial, batch size)."""
    head = (f"{'trial':<12} {'swept':<22} {'B':>7} {'status':<6} {'samples/s':>11} {'tokens/s':>12} "
            f"{'step ms':>8} {'max ms':>8} {'peak MB':>9} {'est MB':>9} {'prec':<5} best")
    lines = [head, "-" * len(head)]
    for r in rows:
        swept = " ".join(f"{k.split('.')[-1]}={v}" for k, v in r["overrides"].items() if k != "train.seed")
        num = lambda v, f: format(v, f) if v is not None else "-"  # noqa: E731
        status = str(getattr(r["status"], "value", r["status"]))  # an enum prints as its class name since 3.11
        lines.append(
            f"{r['trial_id'][:12]:<12} {swept[:22]:<22} {r['batch_size']:>7} {status:<6} "
            f"{num(r['samples_per_s'], ',.0f'):>11} {num(r['tokens_per_s'], ',.0f'):>12} "
            f"{num(r['step_time_ms'], '.1f'):>8} {num(r['step_time_ms_max'], '.1f'):>8} "
            f"{num(r['peak_mem_mb'], ',.0f'):>9} {r['estimate_mb']:>9,.0f} {r['precision']:<5} "
            f"{'*' if r['is_best'] else ''}"
        )
        if r["error"] and status != "ok":
            lines.append(f"{'':<12} {r['error'].splitlines()[0][:110]}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="a kind: throughput job spec")
    parser.add_argument("--device", default=None, help="override train.device (auto|cpu|cuda|mps)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from rnn.device import detect_device

    dev = detect_device(args.device or "auto")
    try:
        rows = run_spec(args.spec, args.device)
    except Exception as e:
        # orchestrator.errors' SpecError is matched by name: it may be absent without pydantic.
        if not isinstance(e, specs.SpecReadError) and type(e).__name__ != "SpecError":
            raise
        print(e, file=sys.stderr)
        return 2
    meta = machine(dev)
    print(f"{args.spec} on {meta['device']} ({meta['device_name']}), torch {meta['torch_version']}, {meta['date']}")
    print(format_rows(rows))
    if args.out:
        write_json(args.out, {"machine": meta, "spec": args.spec, "rows": rows,
                              "torch_threads": torch.get_num_threads()})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
