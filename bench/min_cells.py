"""minGRU and minLSTM against ``nn.GRU`` of the same hidden size: training-step tokens/s, side by side.

The engine's own step (:class:`rnn.step.TrainStep`, what a throughput job times) for each cell at
one shape and two window lengths (T 100 and 256 by default), the sides run in rotation
(:func:`bench.engine.rotate`), each side's figure its median step. The min cells run the path
they train on there (:func:`rnn.mincells.resolve_scan`: the step loop on the CPU, the log-space
parallel scan elsewhere); ``minGRU+MLP`` is ``model.min_mlp: true``, for the cost of the authors'
MLP (no target). Target: minGRU and minLSTM at least 2x ``nn.GRU``'s tokens/s at T 256 (issue 19).
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence

import torch

from bench.common import Ratio, Shape
from bench.engine import rotate
from rnn.config import DataConfig, ModelConfig, TrainConfig
from rnn.data import prepare_data
from rnn.device import resolve_precision
from rnn.models import build_model
from rnn.step import TrainStep

log = logging.getLogger(__name__)

#: side -> (cell, min_mlp)
SIDES: dict[str, tuple[str, bool]] = {
    "gru": ("gru", False), "mingru": ("mingru", False), "minlstm": ("minlstm", False), "mingru+mlp": ("mingru", True)}
#: The window lengths of the issue's speed line; the target applies at the longest.
SEQ_LENS = (100, 256)
TARGET = 2.0
NAMES = {"mingru": "minGRU / nn.GRU", "minlstm": "minLSTM / nn.GRU", "mingru+mlp": "minGRU+MLP / nn.GRU"}


def compare_min_cells(shape: Shape, device: torch.device, *, amp: str, warmup: int, block: int, rounds: int,
                      seq_lens: Sequence[int] = SEQ_LENS) -> list[Ratio]:
    """One ratio per min-cell side and window length: its tokens/s over ``nn.GRU``'s (same E, H, layers, B)."""
    out = []
    for seq_len in seq_lens:
        at = Shape(f"T{seq_len}", shape.batch_size, seq_len, shape.embedding_dim, shape.hidden_size,
                   shape.num_layers, shape.cpu_batch_size)
        data = prepare_data(DataConfig(corpus="builtin", level="char", seq_len=seq_len, val_fraction=0.01), device)
        train = TrainConfig(batch_size=at.batch_size, device=device.type, amp=amp, seed=0)
        precision = resolve_precision(amp, device, batch_size=at.batch_size)
        steps: dict[str, Callable[[], object]] = {}
        for side, (cell, mlp) in SIDES.items():
            torch.manual_seed(0)
            cfg = ModelConfig(cell=cell, embedding_dim=at.embedding_dim, hidden_size=at.hidden_size,
                              num_layers=at.num_layers, dropout=0.0, min_mlp=mlp)
            steps[side] = TrainStep(build_model(cfg, data.vocab_size).to(device), data, train, precision,
                                    at.batch_size)
        times = rotate(steps, device, warmup=warmup, block=block, rounds=rounds)
        med = {k: statistics.median(v) for k, v in times.items()}
        tokens = at.batch_size * seq_len
        log.info("%s: median step %s", at.name, ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()))
        for side, name in NAMES.items():
            out.append(Ratio(
                measure=name, shape=at.name, shape_detail=at.describe(),
                engine_samples_per_s=at.batch_size / med[side], baseline_samples_per_s=at.batch_size / med["gru"],
                target=TARGET if seq_len == max(seq_lens) and side != "mingru+mlp" else None, precision=precision,
                note="tokens/s ratio (same B and T)",
                extra={"timed_steps_each": len(times[side]), "engine_step_ms": med[side] * 1e3,
                       "baseline_step_ms": med["gru"] * 1e3, "engine_tokens_per_s": tokens / med[side],
                       "baseline_tokens_per_s": tokens / med["gru"]},
            ))
    return out
