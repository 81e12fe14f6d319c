"""Eager vs ``torch.compile`` training steps, side by side: the figures behind ``train.compile: auto``.

For each case (plain LSTM, GRU, and the layer-norm LSTM on its fused recurrence, ``ln-fused``: C++
kernels on the CPU, Triton on CUDA, and on the ``torch`` loop, ``ln-torch``) two models of the same
config and initial weights are built; one runs its :class:`rnn.step.TrainStep` eagerly, the other
compiled exactly as the trainer compiles it with ``train.compile: on``
(:func:`rnn.compile.compile_train_step`: ``reduce-overhead`` on CUDA, the warm-up
forward/backward, the fallback). ``compile_s`` is that warm-up less one steady compiled step.
Then the two sides run in alternating blocks (:func:`bench.engine.rotate`) and each side's figure
is its median step. ``break_even_steps = compile_s / (eager - compiled)``: the run length from
which compiling pays (None when the compiled step is not faster). Inductor's on-disk caches are
off unless ``--warm-cache``, so ``compile_s`` is a cold compile.

``python -m bench.compile`` (or ``python -m bench --only compile``) runs it at the char-rnn
shape on the CPU with one thread; ``--cases``, ``--hidden``, ``--seq-len`` narrow it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

import torch

from bench.common import Shape, machine, write_json
from bench.engine import rotate
from rnn.compile import compile_train_step
from rnn.config import DataConfig, ModelConfig, TrainConfig
from rnn.data import LMData, prepare_data
from rnn.lnlstm import LNLSTMPath
from rnn.models import LanguageModel, build_model
from rnn.step import TrainStep

log = logging.getLogger(__name__)

#: case -> (cell, layer_norm, recurrence choice of the layer-norm layers)
CASES: dict[str, tuple[str, bool, str]] = {
    "lstm": ("lstm", False, "auto"),
    "gru": ("gru", False, "auto"),
    "ln-fused": ("lstm", True, "auto"),
    "ln-torch": ("lstm", True, "torch"),
}
#: ``python -m bench --quick``: the harness runs; figures mean nothing.
QUICK_CASES = ("lstm", "ln-fused")
CHAR_RNN = Shape("char-rnn", batch_size=8, seq_len=100, embedding_dim=128, hidden_size=512, num_layers=2,
                 cpu_batch_size=8)


@dataclass
class CompileFigure:
    """One case: eager vs compiled step, and what compiling cost."""

    case: str
    shape: str
    recurrence: Optional[str]
    compiled: bool
    compile_s: float
    eager_ms: float
    compiled_ms: float
    timed_steps_each: int
    note: str = ""

    @property
    def ratio(self) -> float:
        """Compiled speed over eager speed (> 1: compiling is faster per step)."""
        return self.eager_ms / self.compiled_ms

    @property
    def break_even_steps(self) -> Optional[float]:
        gain_s = (self.eager_ms - self.compiled_ms) / 1e3
        return self.compile_s / gain_s if gain_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ratio": self.ratio, "break_even_steps": self.break_even_steps}


def _model(case: str, shape: Shape, vocab: int, device: torch.device) -> LanguageModel:
    cell, layer_norm, recurrence = CASES[case]
    cfg = ModelConfig(cell=cast(Any, cell), embedding_dim=shape.embedding_dim, hidden_size=shape.hidden_size,
                      num_layers=shape.num_layers, dropout=0.0, layer_norm=layer_norm)
    torch.manual_seed(0)
    # The layer-norm layers' recurrence changes no parameter (see LayerNormLSTM).
    model = build_model(cfg, vocab, LNLSTMPath.from_env(recurrence) if layer_norm else None).to(device)
    model.train()
    return model


def measure_case(case: str, shape: Shape, data: LMData, device: torch.device, *,
                 block: int, rounds: int, warmup: int) -> CompileFigure:
    """Eager vs compiled training steps of one case, alternating (see the module doc)."""
    train = TrainConfig(batch_size=shape.batch_size, device=device.type, amp="off", seed=0)
    eager_model = _model(case, shape, data.vocab_size, device)
    eager = TrainStep(eager_model, data, train, "fp32", shape.batch_size)
    compiled = TrainStep(_model(case, shape, data.vocab_size, device), data, train, "fp32", shape.batch_size)
    # The trainer's own path (mode, warm-up, fallback): its compile_s is the warm-up's
    # forward/backward, which compiles; one steady compiled step is taken off below.
    result = compile_train_step(compiled, "on", recurrence=None, total_steps=None, max_time_s=None)
    note = "" if result.compiled else f"compile failed: {result.error}"
    steps: dict[str, Callable[[], object]] = {"eager": eager, "compiled": compiled}
    times = rotate(steps, device, warmup=warmup, block=block, rounds=rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    fig = CompileFigure(
        case=case, shape=shape.describe(), recurrence=eager_model.recurrence_path(device),
        compiled=result.compiled, compile_s=max(0.0, result.compile_s - med["compiled"]),
        eager_ms=med["eager"] * 1e3, compiled_ms=med["compiled"] * 1e3,
        timed_steps_each=len(times["eager"]), note=note,
    )
    log.info("%s: %s", case, fig.to_dict())
    return fig


def measure(cases: Sequence[str], shape: Shape, device: torch.device, *, block: int, rounds: int,
            warmup: int, cold: bool = True) -> list[CompileFigure]:
    """Every case in ``cases`` at ``shape`` (the built-in char corpus); ``cold``: Inductor's caches off."""
    import torch._inductor.config as inductor

    data = prepare_data(DataConfig(corpus="builtin", level="char", seq_len=shape.seq_len, val_fraction=0.01), device)
    # A cold compile is what the first trial on a machine pays (later ones may hit the cache).
    with inductor.patch({"force_disable_caches": cold}):
        return [measure_case(case, shape, data, device, block=block, rounds=rounds, warmup=warmup)
                for case in cases]


def format_compile(figures: Sequence[CompileFigure]) -> str:
    """The printed table."""
    lines = ["| case | recurrence | compiled | compile s | eager ms/step | compiled ms/step | "
             "compiled/eager speed | break-even steps |",
             "|---|---|---|---|---|---|---|---|"]
    for f in figures:
        be = f"{f.break_even_steps:,.0f}" if f.break_even_steps is not None else "never"
        lines.append(f"| {f.case} | {f.recurrence or 'oneDNN'} | {'yes' if f.compiled else 'no'} | "
                     f"{f.compile_s:.1f} | {f.eager_ms:.1f} | {f.compiled_ms:.1f} | {f.ratio:.2f}x | {be} |"
                     + (f" {f.note}" if f.note else ""))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compile", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--batch", type=int, default=None, help="batch size (default 8 on the CPU, 64 on CUDA)")
    p.add_argument("--seq-len", type=int, default=CHAR_RNN.seq_len)
    p.add_argument("--hidden", type=int, default=CHAR_RNN.hidden_size)
    p.add_argument("--layers", type=int, default=CHAR_RNN.num_layers)
    p.add_argument("--steps", type=int, default=3, help="timed steps per block (default 3)")
    p.add_argument("--rounds", type=int, default=4, help="alternations (default 4)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side after the compile (default 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--warm-cache", action="store_true",
                   help="let Inductor use its on-disk caches (default: off, so compile_s is a cold compile)")
    p.add_argument("--out", type=Path, default=None, help="also write the figures as JSON here")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    batch = args.batch or (CHAR_RNN.batch_size if device.type == "cpu" else 64)
    shape = Shape("char-rnn", batch, args.seq_len, CHAR_RNN.embedding_dim, args.hidden, args.layers, batch)
    print(f"eager vs torch.compile training step on {device}, {torch.get_num_threads()} thread(s), "
          f"torch {torch.__version__}; "
          f"{shape.describe()}; {args.steps} step(s) x {args.rounds} rounds")
    t0 = time.perf_counter()
    figures = measure(args.cases, shape, device, block=args.steps, rounds=args.rounds, warmup=args.warmup,
                      cold=not args.warm_cache)
    print(format_compile(figures))
    print(f"{time.perf_counter() - t0:.0f}s")
    if args.out:
        payload = {"machine": machine(device), "argv": list(argv or sys.argv[1:]),
                   "figures": [f.to_dict() for f in figures]}
        print(f"wrote {write_json(args.out, payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
