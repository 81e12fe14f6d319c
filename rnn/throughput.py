"""Throughput: training samples/s by batch size, measured on the training device.

``measure_throughput(run_config, throughput_config)`` builds the data and the model once, then
for each batch size runs ``warmup_steps`` untimed and ``measure_steps`` timed training steps -
the trainer's step: a batch drawn on the device, autocast by precision, GradScaler for fp16,
gradient clipping, an optimiser step - and reports one :class:`ThroughputRow` per size.
:func:`iter_throughput` streams the same rows as they are measured.

Out of memory is a result, not a crash: the row says ``"oom"``, the gradients and optimiser
state are dropped, the allocator cache is emptied and the sweep goes on; larger sizes are then
skipped as ``"oom"`` too. On the CPU a size whose estimated memory exceeds what the machine has
free is skipped *before* it runs, since a CPU allocation that exhausts RAM takes the machine
down (or gets the process OOM-killed) instead of raising.

Timing, and why:

- CUDA: one CUDA event is recorded before the first timed step and one after each, with a
  device synchronise before and after the timed block only. Step i's time is the GPU-side
  interval between its events. No host sync between steps, so (as in the trainer, whose hot
  loop never syncs) the CPU launches step i+1 while the GPU runs step i; a sync per step would
  charge each step the launch latency the trainer hides.
- MPS: ``torch.mps.synchronize()`` before and after each step, timed with ``perf_counter``.
- CPU: ``perf_counter`` around each step (CPU ops are synchronous).

``step_time_ms`` is the median over the timed steps, ``step_time_ms_max`` the slowest, and
``samples_per_s = batch_size / median``: a median ignores the odd step slowed by the rest of
the machine.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch

from rnn.compile import compile_train_step
from rnn.config import RunConfig, ThroughputConfig
from rnn.data import LMData, prepare_data
from rnn.device import DeviceUnavailableError, detect_device, device_report, resolve_precision, use_tf32
from rnn.errors import is_out_of_memory
from rnn.memory import (  # noqa: F401  (re-exported: the throughput sweep's memory guard)
    ACTIVATION_SAFETY,
    CPU_MEMORY_FRACTION,
    LAYER_FLOATS_PER_H,
    available_memory_bytes,
    estimate_step_memory,
    peak_memory_mb,
    release_device_memory,
)
from rnn.models import build_model
from rnn.step import TrainStep
from rnn.throughput_row import ThroughputRow, ThroughputStatus, mark_best  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

SKIPPED_AFTER_OOM = "skipped: a smaller batch ran out of memory"
_MAX_ERROR_CHARS = 2000


def time_steps(step: Callable[[], Any], n: int, device: torch.device) -> list[float]:
    """Run ``step`` ``n`` times and return each step's duration in seconds (see the module doc)."""
    if n < 1:
        return []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
        events[0].record()
        for i in range(n):
            step()
            events[i + 1].record()
        torch.cuda.synchronize(device)
        return [events[i].elapsed_time(events[i + 1]) / 1000.0 for i in range(n)]
    sync = torch.mps.synchronize if device.type == "mps" else (lambda: None)
    times = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


class _Session:
    """What every batch size of one call shares: device, data, model and its initial weights."""

    def __init__(self, config: RunConfig, tp: ThroughputConfig, device: torch.device, data: LMData) -> None:
        self.config, self.tp, self.device, self.data = config, tp, device, data
        self.model = build_model(config.model, data.vocab_size).to(device)
        self.model.train()
        # Each size starts from the same weights, so results do not depend on the order sizes run in.
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.device_name = str(device_report(device).get("device_name") or device.type)
        self.tf32 = use_tf32(device)

    def precision(self, batch_size: int) -> str:
        """``amp: auto`` depends on the batch size, so each size resolves its own precision."""
        return resolve_precision(self.config.train.amp, self.device, batch_size=batch_size)

    def row(self, batch_size: int, status: ThroughputStatus, error: Optional[str] = None,
            **timing: Any) -> ThroughputRow:
        fields: dict[str, Any] = dict(
            samples_per_s=None, tokens_per_s=None, step_time_ms=None, step_time_ms_max=None, peak_mem_mb=None
        )
        fields.update(timing)
        try:
            precision = self.precision(batch_size)
        except (DeviceUnavailableError, ValueError):
            # The row of a precision this device refuses (its error says why) names the one asked for.
            precision = self.config.train.amp
        return ThroughputRow(
            batch_size=batch_size, status=status, device=self.device.type, device_name=self.device_name,
            precision=precision, torch_version=torch.__version__, error=error,
            recurrence=self.model.recurrence_path(self.device, precision), tf32=self.tf32,
            **fields,
        )

    def memory_guard(self, batch_size: int) -> Optional[str]:
        """Why ``batch_size`` must not run, or None. CPU: against free RAM; CUDA: total memory."""
        if self.device.type not in ("cpu", "cuda"):
            return None
        need = estimate_step_memory(
            self.config.model, self.data.vocab_size, batch_size, self.data.seq_len, self.model.num_parameters()
        )
        if self.device.type == "cpu":
            free = available_memory_bytes()
            if free is None or need <= CPU_MEMORY_FRACTION * free:
                return None
            return (
                f"estimated {need / 2**20:,.0f} MB exceeds available {free / 2**20:,.0f} MB "
                f"(limit {CPU_MEMORY_FRACTION:.0%} of it); not run, since exhausting RAM would "
                "take the machine down"
            )
        # CUDA raises a catchable OOM, so only refuse sizes that cannot fit at all.
        total = torch.cuda.get_device_properties(self.device).total_memory
        if need <= total:
            return None
        return f"estimated {need / 2**20:,.0f} MB exceeds the GPU's total {total / 2**20:,.0f} MB"

    def measure(self, batch_size: int, batch_hook: Optional[Callable[[int], None]]) -> ThroughputRow:
        """Warm up and time one batch size; OOM and other exceptions become rows."""
        refused = self.memory_guard(batch_size)
        if refused:
            log.warning("batch %d: %s", batch_size, refused)
            return self.row(batch_size, ThroughputStatus.OOM, refused)
        self.model.load_state_dict(self.initial)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        step: Optional[TrainStep] = None
        failure: Optional[tuple[ThroughputStatus, str]] = None
        try:
            if batch_hook is not None:
                batch_hook(batch_size)
            precision = self.precision(batch_size)
            step = TrainStep(self.model, self.data, self.config.train, precision, batch_size)
            # train.compile applies as in a training run of unbounded length (a throughput figure
            # stands for a long run's speed); the compile happens here, before the warm-up steps.
            compiled = compile_train_step(
                step, self.config.train.compile, recurrence=self.model.recurrence_path(self.device, precision),
                total_steps=None, max_time_s=None,
            )
            for _ in range(self.tp.warmup_steps):
                step()
            times = time_steps(step, self.tp.measure_steps, self.device)
            peak = peak_memory_mb(self.device)
        except Exception as e:  # noqa: BLE001 - every failure at one size is a row, not a crash
            status = ThroughputStatus.OOM if is_out_of_memory(e) else ThroughputStatus.ERROR
            failure = (status, f"{type(e).__name__}: {e}"[:_MAX_ERROR_CHARS])
            # The traceback (and its frames' activations) goes when this block ends.
        finally:
            if step is not None:
                step.release()
            for p in self.model.parameters():
                p.grad = None
            del step
        if failure is not None:
            release_device_memory(self.device)
            log.warning("batch %d: %s (%s)", batch_size, failure[0].value, failure[1].splitlines()[0])
            return self.row(batch_size, failure[0], failure[1])
        median = statistics.median(times)
        samples = batch_size / median
        log.info("batch %d: %.1f samples/s (median step %.1f ms)", batch_size, samples, median * 1e3)
        return self.row(
            batch_size, ThroughputStatus.OK, samples_per_s=samples, tokens_per_s=samples * self.data.seq_len,
            step_time_ms=median * 1e3, step_time_ms_max=max(times) * 1e3, peak_mem_mb=peak,
            compiled=compiled.compiled, compile_s=compiled.compile_s,
        )


def _sizes_explicit(tp: ThroughputConfig) -> Optional[Sequence[int]]:
    if isinstance(tp.batch_sizes, str):
        if tp.batch_sizes != "auto":
            raise ValueError(f"throughput.batch_sizes: expected 'auto' or a list of ints (got {tp.batch_sizes!r})")
        return None
    sizes = [int(b) for b in tp.batch_sizes]
    if not sizes or any(b < 1 for b in sizes):
        raise ValueError(f"throughput.batch_sizes: expected positive batch sizes (got {list(tp.batch_sizes)})")
    return sizes


def iter_throughput(
    config: RunConfig,
    tp: ThroughputConfig,
    *,
    device: Union[str, torch.device, None] = None,
    num_threads: Optional[int] = None,
    data_dir: Union[str, Path, None] = None,
    cache_dir: Union[str, Path, None] = None,
    batch_hook: Optional[Callable[[int], None]] = None,
) -> Iterator[ThroughputRow]:
    """Measure each batch size and yield its row as soon as it is measured.

    Rows come with ``is_best=False``: the best size is known only at the end (use
    :func:`mark_best` on the collected rows, or :func:`measure_throughput`). Arguments as for
    :func:`measure_throughput`.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    dev = detect_device(str(device) if device is not None else config.train.device)
    torch.manual_seed(config.train.seed)
    data = prepare_data(config.data, dev, cache_dir=cache_dir, data_dir=data_dir)
    session = _Session(config, tp, dev, data)
    log.info(
        "throughput on %s (%s, %s): %s, %d parameters",
        dev, session.device_name, config.train.amp, tp.batch_sizes, session.model.num_parameters(),
    )
    sizes = _sizes_explicit(tp)
    if sizes is not None:
        oom_at: Optional[int] = None
        for b in sizes:
            if oom_at is not None and b > oom_at:
                yield session.row(b, ThroughputStatus.OOM, SKIPPED_AFTER_OOM)
                continue
            row = session.measure(b, batch_hook)
            if row.status is ThroughputStatus.OOM:
                oom_at = b if oom_at is None else min(oom_at, b)
            yield row
        return
    yield from _auto(session, tp, batch_hook)


#: ``batch_sizes: auto`` stops after this many sizes in a row without a gain over the best so far.
AUTO_PATIENCE = 2


def _auto(
    session: _Session, tp: ThroughputConfig, batch_hook: Optional[Callable[[int], None]]
) -> Iterator[ThroughputRow]:
    """Double from ``auto_start`` until a stop rule fires; every size measured is yielded."""
    start = time.monotonic()
    b = first = max(1, min(tp.auto_start, tp.auto_max_batch_size))
    best: Optional[ThroughputRow] = None
    misses = 0
    while True:
        row = session.measure(b, batch_hook)
        yield row
        if row.status is not ThroughputStatus.OK:
            reason = f"batch {b} ended {row.status.value}"
            break
        assert row.samples_per_s is not None and row.step_time_ms is not None
        if best is not None and row.samples_per_s < (best.samples_per_s or 0.0) * (1 + tp.auto_min_gain):
            misses += 1  # one short measurement can be noise: stop after AUTO_PATIENCE in a row
            if misses >= AUTO_PATIENCE:
                reason = f"gain below {tp.auto_min_gain:.0%} over the best at {AUTO_PATIENCE} sizes in a row"
                break
        else:
            best, misses = row, 0
        nxt = b * 2
        if nxt > tp.auto_max_batch_size:
            reason = f"next batch {nxt} is past auto_max_batch_size {tp.auto_max_batch_size}"
            break
        # Time grows about linearly with the batch: stop before a size that would blow the budget.
        elapsed = time.monotonic() - start
        predicted = 2 * row.step_time_ms / 1e3 * (tp.warmup_steps + tp.measure_steps)
        if elapsed + predicted > tp.auto_time_budget_s:
            reason = f"time budget {tp.auto_time_budget_s:g}s (spent {elapsed:.1f}s, next ~{predicted:.1f}s)"
            break
        b = nxt
    log.info("auto batch sizes stopped: %s", reason)
    if best is not None and best.batch_size == first and b > first:
        log.info("the best batch size is the smallest tried (%d): the optimum may lie below it; lower "
                 "throughput.auto_start to look", first)


def measure_throughput(
    config: RunConfig,
    tp: ThroughputConfig,
    *,
    device: Union[str, torch.device, None] = None,
    num_threads: Optional[int] = None,
    data_dir: Union[str, Path, None] = None,
    cache_dir: Union[str, Path, None] = None,
    batch_hook: Optional[Callable[[int], None]] = None,
) -> list[ThroughputRow]:
    """Samples/s of ``config``'s training step at each batch size of ``tp``.

    Builds the data and the model once; each batch size gets a fresh optimiser and GradScaler
    and starts from the same initial weights. Explicit sizes run in the order given; after an
    OOM, larger sizes are recorded as ``"oom"`` without running. ``batch_sizes="auto"`` doubles
    from ``auto_start`` until a size does not end ``ok``, :data:`AUTO_PATIENCE` sizes in a row
    fail to beat the best so far by ``auto_min_gain``, the next size passes ``auto_max_batch_size``, or the next
    size would overrun ``auto_time_budget_s`` (measured from the first step, excluding set-up).

    Args:
        config: data, model and train settings (``train.batch_size``/budgets are ignored).
        tp: batch sizes and step counts.
        device: overrides ``config.train.device``.
        num_threads: torch intra-op threads (a Ray actor passes its CPU reservation).
        data_dir: where to look for downloadable corpora.
        cache_dir: tokenizer cache.
        batch_hook: called as ``batch_hook(batch_size)`` before each size is measured; an
            exception it raises counts as that size's (an OOM error gives an ``"oom"`` row).

    Returns:
        One row per batch size in measurement order; the ``ok`` row with the highest samples/s
        has ``is_best=True``.

    Raises:
        Whatever set-up raises (bad corpus, bad device or precision): those are not per-size.
    """
    rows = iter_throughput(
        config, tp, device=device, num_threads=num_threads, data_dir=data_dir, cache_dir=cache_dir,
        batch_hook=batch_hook,
    )
    return mark_best(list(rows))
