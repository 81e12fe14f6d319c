"""``plan``: what a job would run, on what, and roughly how long it would take; dispatches nothing.

The time estimate is a deliberately simple heuristic, good to an order of magnitude at best:

- compute: training costs about ``6 * P * tokens`` FLOPs (forward ``2 * P`` per token, backward
  twice that), where ``P`` counts the recurrent stacks and the output head (an embedding lookup
  costs next to nothing). CPUs are assumed to sustain :data:`CPU_FLOPS_PER_CORE` per reserved core,
  a GPU :data:`GPU_FLOPS` (recurrent nets use a GPU poorly: small sequential matmuls);
- recurrence: every timestep of every layer and direction pays a fixed overhead
  (:data:`CPU_STEP_OVERHEAD_S` / :data:`GPU_STEP_OVERHEAD_S`), ten times more for the layer-norm
  LSTM, whose cell runs step by step instead of in a fused kernel;
- evaluation adds :data:`EVAL_OVERHEAD`; ``max_time_s`` caps a trial; an epoch budget needs the
  corpus size, known for shakespeare and for files (``builtin``'s is not assumed).

Measure a real run before trusting any of these numbers.
"""

from __future__ import annotations

import glob
import heapq
import json
import math
import os
from typing import Any, Mapping, Optional, Sequence

from orchestrator.spec.checks import estimate_parameters, estimate_vocab_size
from orchestrator.spec.schema import JobSpec, ResourcesSpec, allowed_concurrency
from orchestrator.spec.sweep import Trial

# nn.LSTM/GRU training measured 24-30 GFLOP/s on one core of the 2-core dev VM (B 32-64, H 128-512);
# linear in cpus_per_trial, which is optimistic past a few cores.
CPU_FLOPS_PER_CORE = 2.5e10
GPU_FLOPS = 2.0e12
CPU_STEP_OVERHEAD_S = 10e-6
GPU_STEP_OVERHEAD_S = 30e-6
LAYER_NORM_OVERHEAD_FACTOR = 10.0
EVAL_OVERHEAD = 0.10
SHAKESPEARE_CHARS = 1_115_394  # tiny-shakespeare
CHARS_PER_TOKEN = {"char": 1.0, "bpe": 3.5, "word": 5.5}


def local_gpu_count() -> int:
    """NVIDIA GPUs this process could use, without importing torch: ``CUDA_VISIBLE_DEVICES`` if
    set, else the ``/dev/nvidiaN`` device files (Linux). A cheap guess; ``devices`` asks torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = [e.strip() for e in visible.split(",") if e.strip()]
        if entries and entries[0].startswith("-"):  # "-1" hides every GPU
            return 0
        return len(entries)
    return len(glob.glob("/dev/nvidia[0-9]*"))


def _corpus_chars(corpus: str) -> Optional[int]:
    if corpus == "shakespeare":
        return SHAKESPEARE_CHARS
    if corpus == "builtin":
        return None
    try:
        return os.path.getsize(corpus)  # bytes ~ characters for mostly-ASCII text
    except OSError:
        return None


def estimate_step_seconds(config: Mapping[str, Any], resources: ResourcesSpec, batch_size: int) -> float:
    """Seconds for one training step (forward + backward + update) of ``config`` at ``batch_size``."""
    data, model = config["data"], config["model"]
    vocab = estimate_vocab_size(data["level"], data["vocab_size"])
    compute_params = estimate_parameters(model, vocab) - vocab * model["embedding_dim"]
    flops = 6.0 * compute_params * batch_size * data["seq_len"]
    on_gpu = resources.gpus_per_trial > 0
    rate = GPU_FLOPS * min(resources.gpus_per_trial, 1.0) if on_gpu else CPU_FLOPS_PER_CORE * resources.cpus_per_trial
    per_timestep = GPU_STEP_OVERHEAD_S if on_gpu else CPU_STEP_OVERHEAD_S
    if model["layer_norm"]:
        per_timestep *= LAYER_NORM_OVERHEAD_FACTOR
    directions = 2 if model["bidirectional"] else 1
    overhead = 3 * data["seq_len"] * model["num_layers"] * directions * per_timestep
    return flops / rate + overhead


def _train_steps(config: Mapping[str, Any]) -> Optional[int]:
    data, train = config["data"], config["train"]
    candidates = [train["max_steps"]] if train["max_steps"] else []
    chars = _corpus_chars(data["corpus"])
    if train["max_epochs"] and chars:
        tokens = chars * (1 - data["val_fraction"]) / CHARS_PER_TOKEN[data["level"]]
        candidates.append(math.ceil(train["max_epochs"] * tokens / (train["batch_size"] * data["seq_len"])))
    return min(candidates) if candidates else None


def _throughput_sizes(section: Mapping[str, Any]) -> list[int]:
    if section["batch_sizes"] != "auto":
        return list(section["batch_sizes"])
    sizes, size = [], section["auto_start"]
    while size <= section["auto_max_batch_size"]:
        sizes.append(size)
        size *= 2
    return sizes


def estimate_trial_seconds(trial: Trial, kind: str, resources: ResourcesSpec) -> Optional[float]:
    """A rough wall-clock estimate for one trial (see the module docstring), None if unknowable."""
    config = trial.config
    if kind == "throughput":
        section = config["throughput"]
        steps = section["warmup_steps"] + section["measure_steps"]
        total = sum(steps * estimate_step_seconds(config, resources, b) for b in _throughput_sizes(section))
        return min(total, section["auto_time_budget_s"]) if section["batch_sizes"] == "auto" else total
    steps = _train_steps(config)
    cap = config["train"]["max_time_s"]
    if steps is None:
        return cap
    seconds = steps * estimate_step_seconds(config, resources, config["train"]["batch_size"]) * (1 + EVAL_OVERHEAD)
    return min(seconds, cap) if cap else seconds


def makespan(durations: Sequence[float], slots: int) -> float:
    """Wall time to run ``durations`` in order on ``slots`` workers, each taking the next trial when free."""
    if not durations or slots < 1:
        return 0.0
    free_at = [0.0] * min(slots, len(durations))
    for d in durations:
        heapq.heapreplace(free_at, free_at[0] + d)
    return max(free_at)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _plain(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value)


def results_location(spec: JobSpec) -> str:
    """Where the job's results folder would be: ``output/name``."""
    return f"{spec.output.rstrip('/')}/{spec.name}" if "://" in spec.output else os.path.join(spec.output, spec.name)


def render_plan(spec: JobSpec, trials: Sequence[Trial], source: str, total_cpus: float, total_gpus: float) -> str:
    """The text ``plan`` prints: trials, resources, local concurrency and a rough time estimate."""
    res = spec.resources
    estimates = [estimate_trial_seconds(t, spec.kind, res) for t in trials]
    count = f"{len(trials)} trial{'s' if len(trials) != 1 else ''}"
    lines = [f"{source}: {spec.name}, kind {spec.kind}, {count} -> {results_location(spec)}",
             f"  {'#':>4}  {'trial_id':<12}  {'est.':>8}  overrides"]
    for trial, seconds in zip(trials, estimates):
        swept = "  ".join(f"{path}={_plain(value)}" for path, value in trial.overrides.items())
        lines.append(f"  {trial.index:>4}  {trial.trial_id:<12}  {_duration(seconds):>8}  {swept}")
    gpus = f"{res.gpus_per_trial:g} GPU" + ("" if res.gpus_per_trial == 1 else "s")
    cpus = f"{res.cpus_per_trial:g} CPU" + ("" if res.cpus_per_trial == 1 else "s")
    retries = f"{res.max_retries} time" + ("" if res.max_retries == 1 else "s")
    lines.append(f"each trial reserves {cpus} and {gpus}; a failed trial is retried up to {retries}")
    slots = allowed_concurrency(res, total_cpus, total_gpus)
    machine = f"this machine: {total_cpus:g} CPUs, {total_gpus:g} GPUs -> "
    if slots == 0:
        lines.append(machine + "no trial fits here (each needs more than the machine has)")
        return "\n".join(lines)
    lines.append(machine + f"{slots} trial{'s' if slots != 1 else ''} at a time (max_concurrent {res.max_concurrent})")
    if any(e is None for e in estimates):
        total = "unknown (an epoch budget on a corpus of unknown size)"
    else:
        total = _duration(makespan([e or 0.0 for e in estimates], slots))
    where = "GPU" if res.gpus_per_trial > 0 else "CPU"
    lines.append(f"rough time ({where} heuristic, see orchestrator/plan.py; measure before trusting): "
                 f"about {total} for the job")
    return "\n".join(lines)
