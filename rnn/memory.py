"""Memory: what a training step needs, what the machine has free, and what a run used.

The throughput sweep uses these to skip, on the CPU, a batch that would exhaust RAM before it
allocates anything (a CPU allocation that exhausts RAM takes the machine down, or gets the
process OOM-killed, instead of raising).
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import Optional

import torch

from rnn.config import ModelConfig

#: A CPU batch is skipped when its estimated memory exceeds this fraction of free RAM.
CPU_MEMORY_FRACTION = 0.8
#: Headroom on the activation estimate for allocator fragmentation and transient copies.
ACTIVATION_SAFETY = 1.25
#: Floats kept for backward per token, per layer, in units of hidden_size. Measured on the CPU
#: (torch 2.13, peak RSS of one AdamW step, E=192/H=384 and E=128/H=512): LSTM ~12H, GRU ~10H,
#: tanh RNN ~4.2H, layer-norm LSTM ~24H (its Python-level recurrence keeps every
#: intermediate); minGRU and minLSTM with min_mlp ~28.5H (E=128/H=512, B 16 against 128; the
#: MLP's 4H hidden layer is kept twice; without min_mlp they keep less). cuDNN keeps less, so
#: these are upper bounds on CUDA.
LAYER_FLOATS_PER_H = {"lstm": 12.5, "gru": 10.5, "rnn": 4.5, "lnlstm": 25.0, "mingru": 31.5, "minlstm": 32.0}

def estimate_step_memory(
    cfg: ModelConfig, vocab_size: int, batch_size: int, seq_len: int, num_params: int
) -> int:
    """Bytes one fp32 AdamW training step needs at ``batch_size``: a pessimistic estimate.

    Activations kept for backward, per token (``B * T`` of them), in floats: the embedding
    output and its dropout (2E); per layer and direction the cell's gate activations and states
    (:data:`LAYER_FLOATS_PER_H` x H); the head's input (H) and the logits with their softmax
    and gradient (3V). Times :data:`ACTIVATION_SAFETY`. Plus the window and its gather index
    (int64), and 20 bytes per parameter: weights, gradients, AdamW's two moments, and the copy
    of the initial weights :func:`rnn.throughput.iter_throughput` restores between sizes. Mixed precision
    needs less; the estimate ignores that.
    """
    kind = "lnlstm" if cfg.layer_norm else cfg.cell  # mingru/minlstm: their block, MLP included
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


def peak_memory_mb(device: torch.device) -> Optional[float]:
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


def release_device_memory(device: Optional[torch.device] = None) -> None:
    """Hand cached accelerator memory back after an out-of-memory error.

    Collects garbage first (the frames of a caught exception may still hold activations), then
    empties the caching allocator of ``device``, or of every accelerator present when None.
    """
    gc.collect()
    kind = device.type if device is not None else None
    if kind in (None, "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if kind in (None, "mps") and hasattr(torch, "mps") and torch.backends.mps.is_available():
        torch.mps.empty_cache()
