"""Engine vs bare PyTorch at one shape: ratios 1-3 of the benchmark table.

1. The engine's plain LSTM step vs a bare ``nn.Embedding + nn.LSTM + nn.Linear`` loop.
2. The engine's layer-norm LSTM step vs the same bare loop.
3. :class:`rnn.train.Trainer`'s steady-state samples/s vs a bare loop of the same model, the
   two run in lockstep (a bare step inside the trainer's ``step_hook``).

1 and 2 time the step :func:`rnn.throughput.measure_throughput` times
(:class:`rnn.step.TrainStep`), so the table says what a throughput job reports. The
three sides run in rotation, a block of steps each (bare, LSTM, LN-LSTM, then the reverse
order), and each side's figure is its median step time.
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bench.alloc import minor_faults
from bench.common import Ratio, Shape
from rnn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnn.data import LMData, prepare_data
from rnn.device import autocast_dtype, resolve_precision
from rnn.models import LanguageModel, build_model
from rnn.step import TrainStep
from rnn.throughput import time_steps
from rnn.train import Trainer

log = logging.getLogger(__name__)

#: Validation split for the trainer runs: small, so evaluations (not timed) stay cheap.
VAL_FRACTION = 0.01


def run_config(shape: Shape, device: torch.device, *, layer_norm: bool, amp: str) -> RunConfig:
    """The engine config for ``shape``: char-level built-in corpus, no dropout (the bare loop has none)."""
    return RunConfig(
        data=DataConfig(corpus="builtin", level="char", seq_len=shape.seq_len, val_fraction=VAL_FRACTION),
        model=ModelConfig(
            cell="lstm", embedding_dim=shape.embedding_dim, hidden_size=shape.hidden_size,
            num_layers=shape.num_layers, dropout=0.0, layer_norm=layer_norm,
        ),
        train=TrainConfig(batch_size=shape.batch_size, device=device.type, amp=amp, seed=0),
    )


class BareLM(nn.Module):
    """The baseline: embedding -> ``nn.LSTM`` -> linear, nothing else."""

    def __init__(self, vocab_size: int, shape: Shape) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, shape.embedding_dim)
        self.lstm = nn.LSTM(shape.embedding_dim, shape.hidden_size, shape.num_layers, batch_first=True)
        self.head = nn.Linear(shape.hidden_size, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(tokens))  # (B, T, H)
        return self.head(out)  # (B, T, V)


def bare_step(
    model: nn.Module, window: torch.Tensor, train: TrainConfig, precision: str = "fp32"
) -> Callable[[], torch.Tensor]:
    """A bare training step on one fixed batch ``window`` (B, T+1): AdamW, cross-entropy, clipping."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    params = list(model.parameters())
    dtype = autocast_dtype(precision)
    autocast = torch.autocast(window.device.type, dtype=dtype) if dtype is not None else nullcontext()

    def step() -> torch.Tensor:
        with autocast:
            if isinstance(model, LanguageModel):
                logits = model(window).logits  # (B, T, V): it takes the whole window
            else:
                logits = model(window[:, :-1])  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.clip_grad_norm or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def rotate(
    steps: dict[str, Callable[[], object]], device: torch.device, *, warmup: int, block: int, rounds: int
) -> dict[str, list[float]]:
    """Time ``block`` steps of each side in turn, ``rounds`` times, alternating the order.

    Returns every timed step's seconds per side. Alternating (A B C, C B A, ...) keeps any side
    from always running right after the same other one (warm caches, thermal state).
    """
    for step in steps.values():
        for _ in range(warmup):
            step()
    names = list(steps)
    times: dict[str, list[float]] = {n: [] for n in names}
    faults = dict.fromkeys(names, 0)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            f0 = minor_faults()
            times[name] += time_steps(steps[name], block, device)
            faults[name] += minor_faults() - f0
    # Page faults per step show whether one side pays the kernel for memory the other does not
    # (see bench/alloc.py); they should be near 0 on both sides.
    log.info("minor page faults per step: %s",
             ", ".join(f"{n} {faults[n] / max(1, len(times[n])):.0f}" for n in names))
    return times


def compare_cells(
    shape: Shape, device: torch.device, data: LMData, *, amp: str, warmup: int, block: int, rounds: int
) -> list[Ratio]:
    """Ratios 1 and 2: the engine's LSTM and LN-LSTM steps vs the bare ``nn.LSTM`` loop."""
    torch.manual_seed(0)
    B, V = shape.batch_size, data.vocab_size
    plain, ln = (run_config(shape, device, layer_norm=x, amp=amp) for x in (False, True))
    window = torch.randint(0, V, (B, shape.seq_len + 1), device=device)  # (B, T+1)
    steps: dict[str, Callable[[], object]] = {"bare": bare_step(BareLM(V, shape).to(device), window, plain.train)}
    precisions = {}
    for name, cfg in (("lstm", plain), ("ln", ln)):
        precisions[name] = resolve_precision(amp, device, batch_size=B)
        model = build_model(cfg.model, V).to(device)
        steps[name] = TrainStep(model, data, cfg.train, precisions[name], B)
    times = rotate(steps, device, warmup=warmup, block=block, rounds=rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    timed = len(times["bare"])
    log.info("%s: median step bare %.1f ms, lstm %.1f ms, ln %.1f ms (%d steps each)",
             shape.name, med["bare"] * 1e3, med["lstm"] * 1e3, med["ln"] * 1e3, timed)
    out = []
    for name, measure, target in (("lstm", "engine LSTM / bare nn.LSTM", 0.95),
                                  ("ln", "engine LN-LSTM / bare nn.LSTM", None)):
        out.append(Ratio(
            measure=measure, shape=shape.name, shape_detail=shape.describe(),
            engine_samples_per_s=B / med[name], baseline_samples_per_s=B / med["bare"],
            target=target, precision=precisions[name],
            note="baseline fp32" if precisions[name] != "fp32" else "",
            extra={"timed_steps_each": timed, "engine_step_ms": med[name] * 1e3, "baseline_step_ms": med["bare"] * 1e3},
        ))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class _BareInLockstep:
    """The trainer's ``step_hook``: one timed bare step after every trainer step.

    Running the two loops in lockstep (trainer step, bare step, trainer step, ...) makes
    machine noise hit both alike; timing them in separate runs on a shared CPU gave ratios
    that moved by +-10% from run to run. The device is synchronised around the bare step, so
    its time is its own and the rest of each trainer window is the trainer's.
    """

    def __init__(self, step: Callable[[], object], device: torch.device) -> None:
        self.step, self.device = step, device
        self.seconds: dict[int, float] = {}  # trainer step -> the bare step timed after it

    def __call__(self, trainer_step: int, model: object) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        self.step()
        _sync(self.device)
        self.seconds[trainer_step] = time.perf_counter() - t0


def compare_trainer(
    shape: Shape, device: torch.device, data: LMData, *, amp: str, window: int, windows: int, rounds: int
) -> Ratio:
    """Ratio 3: ``Trainer`` samples/s vs a bare loop of the same model on one fixed batch.

    The bare step runs in lockstep inside the trainer's ``step_hook`` (see
    :class:`_BareInLockstep`). For each evaluation window after the first (warm-up), the
    trainer's own time is the window's time from its :class:`~rnn.events.EvalRecord`
    (``steps * B / samples_per_s``) less the bare steps timed inside it; the figures are the
    medians over windows of ``rounds`` trainer runs.
    """
    cfg = run_config(shape, device, layer_norm=False, amp=amp)
    cfg = replace(cfg, train=replace(cfg.train, max_steps=window * windows, eval_every=window))
    B = shape.batch_size
    precision = resolve_precision(amp, device, batch_size=B)
    torch.manual_seed(0)
    bare_model = build_model(cfg.model, data.vocab_size).to(device)
    bare_model.train()
    generator = torch.Generator(device=device).manual_seed(0)
    batch = data.sample_batch(B, generator)  # (B, T+1), reused every step
    trainer_rates: list[float] = []
    bare_rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        for r in range(rounds):
            hook = _BareInLockstep(bare_step(bare_model, batch, cfg.train, precision), device)
            result = Trainer(cfg, Path(tmp) / f"run{r}", device=device, step_hook=hook).fit()
            previous = 0
            for i, rec in enumerate(result.evals):
                steps = rec.step - previous
                bare = sum(hook.seconds[s] for s in range(previous + 1, rec.step + 1))
                previous = rec.step
                if i == 0:
                    continue  # warm-up window
                trainer_rates.append(steps * B / (steps * B / rec.samples_per_s - bare))
                bare_rates.append(steps * B / bare)
    engine, bare = statistics.median(trainer_rates), statistics.median(bare_rates)
    log.info("%s: trainer %.1f samples/s, bare loop %.1f samples/s", shape.name, engine, bare)
    return Ratio(
        measure="Trainer / bare loop (same model)", shape=shape.name, shape_detail=shape.describe(),
        engine_samples_per_s=engine, baseline_samples_per_s=bare, target=0.95, precision=precision,
        note="bare step in lockstep via step_hook",
        extra={"window_steps": window, "windows_used": len(trainer_rates)},
    )


#: The production heartbeat period (``orchestrator.run.events.HEARTBEAT_S``; bench imports no
#: orchestrator code: it runs on a bare GPU image).
HEARTBEAT_S = 15.0


def compare_heartbeat(
    shape: Shape, device: torch.device, data: LMData, *, amp: str, window: int, windows: int, rounds: int
) -> Ratio:
    """Ratio 4: ``Trainer`` samples/s with a heartbeat at *every* step against none (runs
    alternated, the medians of the windows after the first). A heartbeat reads the clock each
    step and, when one is due, the train loss back from the device; sending one every step is
    the worst case, which makes its cost measurable. ``extra["cost_at_15s"]`` is that cost
    spread over the production period instead: the time a heartbeat adds, divided by 15 s."""
    cfg = run_config(shape, device, layer_norm=False, amp=amp)
    cfg = replace(cfg, train=replace(cfg.train, max_steps=window * windows, eval_every=window))
    B = shape.batch_size
    precision = resolve_precision(amp, device, batch_size=B)
    rates: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="bench-heartbeat-") as tmp:
        for r in range(max(2, rounds)):
            for beat in ((False, True) if r % 2 == 0 else (True, False)):
                trainer = Trainer(cfg, Path(tmp) / f"run{r}{beat}", device=device, heartbeat_s=0.0 if beat else None)
                rates[beat] += [rec.samples_per_s for rec in trainer.fit().evals[1:]]
    with_beats, without = statistics.median(rates[True]), statistics.median(rates[False])
    added_s = max(0.0, B / with_beats - B / without)  # per step, hence per heartbeat
    log.info("%s: trainer %.1f samples/s with a heartbeat every step, %.1f without", shape.name, with_beats, without)
    return Ratio(
        measure="Trainer, beat each step / none", shape=shape.name, shape_detail=shape.describe(),
        engine_samples_per_s=with_beats, baseline_samples_per_s=without, target=None, precision=precision,
        note=f"worst case; cost at one per {HEARTBEAT_S:g} s: {added_s / HEARTBEAT_S:.5%}",
        extra={"heartbeat_added_s": added_s, "cost_at_15s": added_s / HEARTBEAT_S},
    )


def prepare(shape: Shape, device: torch.device) -> LMData:
    """The built-in corpus at ``shape``'s window length, on ``device`` (shared by ratios 1-3)."""
    return prepare_data(run_config(shape, device, layer_norm=False, amp="off").data, device)
