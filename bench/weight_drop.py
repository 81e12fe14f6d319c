"""``model.weight_drop`` on ``nn.LSTM``: the training step with DropConnect against without, side by side.

Both sides are the engine's :class:`rnn.step.TrainStep` on the same config, one with
``weight_drop: 0.5`` (every forward drops each layer's ``weight_hh`` and runs the fused op on the
dropped weights, :func:`rnn.regularize.fused_rnn_forward`), one with 0; run in rotation
(:func:`bench.engine.rotate`). Target: at least 0.9x the samples/s without (issue 19).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace

import torch

from bench.common import Ratio, Shape
from bench.engine import rotate, run_config
from rnn.data import LMData
from rnn.device import resolve_precision
from rnn.models import build_model
from rnn.step import TrainStep

log = logging.getLogger(__name__)

TARGET = 0.9
WEIGHT_DROP = 0.5


def compare_weight_drop(shape: Shape, device: torch.device, data: LMData, *, amp: str, warmup: int, block: int,
                        rounds: int) -> Ratio:
    """``nn.LSTM`` with ``weight_drop`` over without: samples/s, same shape and batch."""
    cfg = run_config(shape, device, layer_norm=False, amp=amp)
    precision = resolve_precision(amp, device, batch_size=shape.batch_size)
    steps = {}
    for side, p in (("without", 0.0), ("with", WEIGHT_DROP)):
        torch.manual_seed(0)
        model = build_model(replace(cfg.model, weight_drop=p), data.vocab_size).to(device)
        steps[side] = TrainStep(model, data, cfg.train, precision, shape.batch_size)
    times = rotate(steps, device, warmup=warmup, block=block, rounds=rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    log.info("%s: median step without %.1f ms, with weight_drop %.1f ms", shape.name, med["without"] * 1e3,
             med["with"] * 1e3)
    return Ratio(
        measure=f"LSTM weight_drop {WEIGHT_DROP} / none", shape=shape.name, shape_detail=shape.describe(),
        engine_samples_per_s=shape.batch_size / med["with"], baseline_samples_per_s=shape.batch_size / med["without"],
        target=TARGET, precision=precision, note="fused op on dropped weights",
        extra={"timed_steps_each": len(times["with"]), "engine_step_ms": med["with"] * 1e3,
               "baseline_step_ms": med["without"] * 1e3},
    )
