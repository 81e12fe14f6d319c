"""One checkpoint's validation figures in both ``data.val_mode``s: fixed windows, each from a zero
state, and the held-out split read as streams with the state carried (:mod:`rnn.evaluate`).

    python -m bench.eval_modes CHECKPOINT [CHECKPOINT ...] [--threads N]

For each checkpoint (a ``best.pt`` or ``last.pt`` of a train trial): its config's data split,
evaluated both ways on the CPU, one line each (loss in nats/token, bits per character, top-1
accuracy, seconds), and the difference. The corpus is found as training finds it
(``$RNN_DATA_DIR`` first).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from rnn.checkpoint import load_checkpoint
from rnn.config import RunConfig, ValMode
from rnn.data import prepare_data
from rnn.evaluate import ValMetrics, eval_batch_size, evaluate
from rnn.models import build_model

log = logging.getLogger(__name__)

MODES: tuple[ValMode, ...] = ("windows", "stream")


@dataclass(frozen=True)
class ModeFigure:
    mode: str
    metrics: ValMetrics
    seconds: float


def evaluate_modes(checkpoint: Path) -> list[ModeFigure]:
    """The checkpoint's weights scored in each mode, on the CPU."""
    state = load_checkpoint(checkpoint)
    cfg = RunConfig.from_dict(state["config"])
    data = prepare_data(cfg.data, "cpu")
    model = build_model(cfg.model, data.vocab_size)
    model.load_state_dict(state["model"])
    rows = eval_batch_size(cfg.train.batch_size, cfg.data.seq_len, data.vocab_size)
    figures = []
    for mode in MODES:
        start = time.perf_counter()
        metrics = evaluate(model, data, contextlib.nullcontext(), rows, mode)
        figures.append(ModeFigure(mode, metrics, time.perf_counter() - start))
    return figures


def lines(checkpoint: Path, figures: list[ModeFigure]) -> list[str]:
    out = [f"{checkpoint}:"]
    for f in figures:
        m = f.metrics
        out.append(f"  {f.mode:<8} val loss {m.loss:.4f}  bpc {m.bpc:.4f}  top-1 {m.accuracy:.2%}  ({f.seconds:.1f} s)")
    windows, stream = (f.metrics.loss for f in figures)
    out.append(f"  stream - windows: {stream - windows:+.4f} nats/token")
    return out


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_modes", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    for checkpoint in args.checkpoints:
        print("\n".join(lines(checkpoint, evaluate_modes(checkpoint))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
