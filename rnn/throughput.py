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

import gc
import logging
import os
import statistics
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import torch

from rnn.config import ModelConfig, RunConfig, ThroughputConfig, TrainConfig
from rnn.data import LMData, prepare_data
from rnn.device import autocast_dtype, detect_device, device_report, resolve_precision
from rnn.errors import is_out_of_memory
from rnn.models import LanguageModel, build_model
from rnn.optim import build_optimizer
from rnn.train import lm_loss

log = logging.getLogger(__name__)

#: A CPU batch is skipped when its estimated memory exceeds this fraction of free RAM.
CPU_MEMORY_FRACTION = 0.8
#: Headroom on the activation estimate for allocator fragmentation and transient copies.
ACTIVATION_SAFETY = 1.25
#: Floats kept for backward per token, per layer, in units of hidden_size. Measured on the CPU
#: (torch 2.13, peak RSS of one AdamW step, E=192/H=384 and E=128/H=512): LSTM ~12H, GRU ~10H,
#: tanh RNN ~4.2H, layer-norm LSTM ~24H (its Python-level recurrence keeps every
#: intermediate). cuDNN keeps less, so these are upper bounds on CUDA.
LAYER_FLOATS_PER_H = {"lstm": 12.5, "gru": 10.5, "rnn": 4.5, "lnlstm": 25.0}
SKIPPED_AFTER_OOM = "skipped: a smaller batch ran out of memory"
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class ThroughputRow:
    """One batch size's measurement; the fields are ``throughput.parquet``'s columns.

    ``status``: ``"ok"``, ``"oom"`` (ran out of memory, was estimated not to fit, or was
    skipped after a smaller size ran out) or ``"error"`` (any other exception; ``error`` has it).
    The timing and memory fields are None unless ``status == "ok"``.

    ``peak_mem_mb``: CUDA, ``torch.cuda.max_memory_allocated`` over this batch size's steps
    (reset per size; includes weights, optimiser state and data). CPU, the *process's* peak
    resident set (``ru_maxrss``) so far: a lifetime high-water mark that never goes down, so
    it is only informative for the largest size measured yet. MPS, the driver's allocated
    memory after the steps (MPS has no peak counter).
    """

    batch_size: int
    status: str
    samples_per_s: Optional[float]
    tokens_per_s: Optional[float]
    step_time_ms: Optional[float]
    step_time_ms_max: Optional[float]
    peak_mem_mb: Optional[float]
    device: str
    device_name: str
    precision: str
    torch_version: str
    error: Optional[str]
    is_best: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (what ``ResultsStore.replace_throughput`` takes)."""
        return asdict(self)


class TrainStep:
    """One training step as :class:`rnn.train.Trainer` runs it, with a fresh optimiser.

    Draws ``batch_size`` windows on the device, runs :func:`rnn.train.lm_loss` under the
    run's autocast, scales the loss for fp16, clips the gradient norm and steps the optimiser.
    It leaves out the trainer's per-step bookkeeping (a loss sum, a finiteness flag and the
    lr schedule): a few scalar kernels per step.

    Args:
        model: the model, already on ``device``.
        data: token streams on ``device``.
        train: optimiser, lr, clipping, label smoothing and seed.
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"`` (see :func:`rnn.device.resolve_precision`).
        batch_size: windows per step.
    """

    def __init__(
        self, model: LanguageModel, data: LMData, train: TrainConfig, precision: str, batch_size: int
    ) -> None:
        self.model = model
        self.data = data
        self.train = train
        self.batch_size = batch_size
        self.device = data.train.device
        self.optimizer: Optional[torch.optim.Optimizer] = build_optimizer(model, train)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(train.seed)
        dtype = autocast_dtype(precision)
        self._autocast = (
            torch.autocast(device_type=self.device.type, dtype=dtype) if dtype is not None else nullcontext()
        )
        self._params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self) -> torch.Tensor:
        """Run one step; returns the (detached) loss without reading it back to the host."""
        assert self.optimizer is not None, "TrainStep used after release()"
        window = self.data.sample_batch(self.batch_size, self.generator)  # (B, T+1)
        with self._autocast:
            loss = lm_loss(self.model, window, self.train.label_smoothing)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.train.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self._params, self.train.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def release(self) -> None:
        """Drop the gradients and the optimiser state (after an OOM, or between batch sizes)."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self.optimizer.state.clear()
        self.optimizer = None
        for p in self._params:
            p.grad = None


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


def estimate_step_memory(
    cfg: ModelConfig, vocab_size: int, batch_size: int, seq_len: int, num_params: int
) -> int:
    """Bytes one fp32 AdamW training step needs at ``batch_size``: a pessimistic estimate.

    Activations kept for backward, per token (``B * T`` of them), in floats: the embedding
    output and its dropout (2E); per layer and direction the cell's gate activations and states
    (:data:`LAYER_FLOATS_PER_H` x H); the head's input (H) and the logits with their softmax
    and gradient (3V). Times :data:`ACTIVATION_SAFETY`. Plus the window and its gather index
    (int64), and 20 bytes per parameter: weights, gradients, AdamW's two moments, and the copy
    of the initial weights :func:`iter_throughput` restores between sizes. Mixed precision
    needs less; the estimate ignores that.
    """
    kind = "lnlstm" if cfg.layer_norm else cfg.cell
    directions = 2 if cfg.bidirectional else 1
    tokens = batch_size * seq_len
    per_token = 2 * cfg.embedding_dim + directions * (
        cfg.num_layers * LAYER_FLOATS_PER_H[kind] * cfg.hidden_size + cfg.hidden_size + 3 * vocab_size
    )
    activations = 4 * tokens * per_token * ACTIVATION_SAFETY
    windows = 2 * 8 * batch_size * (seq_len + 1)
    return int(activations + windows + 20 * num_params)


def available_memory_bytes() -> Optional[int]:
    """RAM this process can still use: ``MemAvailable``, capped by a cgroup v2 memory limit.

    Falls back to ``os.sysconf`` free pages off Linux; None when nothing says.
    """
    free: Optional[int] = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024  # reported in kB
                    break
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            return None
    # In a container MemAvailable describes the host; the cgroup limit is what the OOM killer uses.
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            used = int((cgroup / "memory.current").read_text().strip())
            free = min(free, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return free


def _peak_memory_mb(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    try:
        import resource  # Unix only
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, kB on Linux


def _empty_cache(device: torch.device) -> None:
    gc.collect()  # frames of a caught exception may still hold activations
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class _Session:
    """What every batch size of one call shares: device, data, model and its initial weights."""

    def __init__(self, config: RunConfig, tp: ThroughputConfig, device: torch.device, data: LMData) -> None:
        self.config, self.tp, self.device, self.data = config, tp, device, data
        self.model = build_model(config.model, data.vocab_size).to(device)
        self.model.train()
        # Each size starts from the same weights, so results do not depend on the order sizes run in.
        self.initial = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.device_name = str(device_report(device).get("device_name") or device.type)

    def precision(self, batch_size: int) -> str:
        """``amp: auto`` depends on the batch size, so each size resolves its own precision."""
        return resolve_precision(self.config.train.amp, self.device, batch_size=batch_size)

    def row(self, batch_size: int, status: str, error: Optional[str] = None, **timing: Any) -> ThroughputRow:
        fields = dict(samples_per_s=None, tokens_per_s=None, step_time_ms=None, step_time_ms_max=None, peak_mem_mb=None)
        fields.update(timing)
        return ThroughputRow(
            batch_size=batch_size, status=status, device=self.device.type, device_name=self.device_name,
            precision=self.precision(batch_size), torch_version=torch.__version__, error=error, **fields,
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
            return self.row(batch_size, "oom", refused)
        self.model.load_state_dict(self.initial)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        step: Optional[TrainStep] = None
        failure: Optional[tuple[str, str]] = None
        try:
            if batch_hook is not None:
                batch_hook(batch_size)
            step = TrainStep(self.model, self.data, self.config.train, self.precision(batch_size), batch_size)
            for _ in range(self.tp.warmup_steps):
                step()
            times = time_steps(step, self.tp.measure_steps, self.device)
            peak = _peak_memory_mb(self.device)
        except Exception as e:  # noqa: BLE001 - every failure at one size is a row, not a crash
            status = "oom" if is_out_of_memory(e) else "error"
            failure = (status, f"{type(e).__name__}: {e}"[:_MAX_ERROR_CHARS])
            # The traceback (and its frames' activations) goes when this block ends.
        finally:
            if step is not None:
                step.release()
            for p in self.model.parameters():
                p.grad = None
            del step
        if failure is not None:
            _empty_cache(self.device)
            log.warning("batch %d: %s (%s)", batch_size, failure[0], failure[1].splitlines()[0])
            return self.row(batch_size, failure[0], failure[1])
        median = statistics.median(times)
        samples = batch_size / median
        log.info("batch %d: %.1f samples/s (median step %.1f ms)", batch_size, samples, median * 1e3)
        return self.row(
            batch_size, "ok", samples_per_s=samples, tokens_per_s=samples * self.data.seq_len,
            step_time_ms=median * 1e3, step_time_ms_max=max(times) * 1e3, peak_mem_mb=peak,
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
                yield session.row(b, "oom", SKIPPED_AFTER_OOM)
                continue
            row = session.measure(b, batch_hook)
            if row.status == "oom":
                oom_at = b if oom_at is None else min(oom_at, b)
            yield row
        return
    yield from _auto(session, tp, batch_hook)


def _auto(session: _Session, tp: ThroughputConfig, batch_hook: Optional[Callable[[int], None]]) -> Iterator[ThroughputRow]:
    """Double from ``auto_start`` until a stop rule fires; every size measured is yielded."""
    start = time.monotonic()
    b = max(1, min(tp.auto_start, tp.auto_max_batch_size))
    previous: Optional[ThroughputRow] = None
    while True:
        row = session.measure(b, batch_hook)
        yield row
        if row.status != "ok":
            reason = f"batch {b} ended {row.status}"
            break
        assert row.samples_per_s is not None and row.step_time_ms is not None
        if previous is not None and row.samples_per_s < previous.samples_per_s * (1 + tp.auto_min_gain):
            reason = f"gain below {tp.auto_min_gain:.0%} at batch {b}"
            break
        previous, nxt = row, b * 2
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


def mark_best(rows: Sequence[ThroughputRow]) -> list[ThroughputRow]:
    """The rows with ``is_best`` set on the ``ok`` row with the highest samples/s (none if no ok row)."""
    ok = [r for r in rows if r.status == "ok" and r.samples_per_s is not None]
    best = max(ok, key=lambda r: r.samples_per_s) if ok else None  # type: ignore[arg-type,return-value]
    return [replace(r, is_best=r is best) for r in rows]


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
    from ``auto_start`` until a size does not end ``ok``, the gain over the previous size
    falls below ``auto_min_gain``, the next size passes ``auto_max_batch_size``, or the next
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
