"""``train.compile: off | auto | on``: ``torch.compile`` of the model's training forward (and backward).

:func:`compile_train_step` decides (:func:`decide`), wraps the model in ``torch.compile`` and
runs one forward/backward on a throw-away batch, so the compile happens, and is timed
(``compile_s``), at set-up instead of inside the first training step. A compile that fails (no
C++ compiler, a dynamo or Inductor error) logs one warning and leaves the run eager: compiling
is an optimisation and never fails a trial. The warm-up draws its batch from a generator of its
own, restores the RNG states it used (dropout) and drops its gradients, so a run sees the same
batches whichever setting it has.

Only the training step runs the compiled wrapper (:attr:`rnn.step.TrainStep.forward_model`).
Evaluation, sampling and checkpoints use the original module: a checkpoint holds the plain
``state_dict`` (no ``_orig_mod.`` prefix) and resumes under any ``compile`` setting, and
``model.eval()`` never triggers a second compile.

Modes: on CUDA ``reduce-overhead`` (Inductor plus CUDA graphs, which remove the per-step launch
overhead a recurrence is made of; :class:`rnn.step.TrainStep` then marks each step's start for
the CUDA-graph trees); elsewhere Inductor's default mode. Shapes are static (``dynamic=False``):
a run has one batch shape, and a throughput trial compiles again for each batch size.

What ``auto`` does, and why (``python -m bench.compile``, docs/benchmarks.md, 2-core CPU, 1 thread,
char-rnn shape B 8, T 100, E 128, H 512, 2 layers, torch 2.13, cold Inductor cache):

- ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` cells: dynamo does not trace the oneDNN/cuDNN RNN op, so
  only the embedding, head and loss compile. The step was 1.01-1.03x (LSTM) and 0.99-1.06x (GRU)
  eager, about the run-to-run noise of this machine, for a 9-11 s compile. ``auto``: off.
- Layer-norm LSTM on the ``fused-cpu`` (or ``triton``) recurrence: the fused kernels run eagerly
  between compiled pieces (:func:`rnn.lnlstm.eager_under_compile`: the C++ and Triton
  launches are opaque to dynamo), and so does the oneDNN input projection
  (:func:`rnn.lnlstm.onednn.linear`: Inductor failed to lower the oneDNN op), so again only the
  edges compile: 0.94-0.99x eager on the CPU, a 6-7 s compile. ``auto``: off.
- Layer-norm LSTM on the ``torch`` loop (MPS, CPU autocast, no C++ kernels or no Triton): dynamo
  unrolls the T-step loop into one graph and Inductor fuses each step's pointwise work: 1.14-1.27x
  eager after a 299-335 s compile (see :data:`AUTO_MIN_STEPS`). ``auto``: on where the run is long
  enough to repay the compile; not on MPS (not measured). Even compiled, this path's step took
  about twice the fused C++ path's (266-326 against 127-143 ms), so on the CPU it only matters
  where those kernels cannot run (``RNN_LNLSTM_CPP=0``, a failed build) or under CPU autocast.

On CUDA nothing was measured in this project; the issue that asked for ``compile`` recorded a
whole-model compile with CUDA graphs taking the torch-loop LN-LSTM from 0.08-0.18x to
0.55-0.66x of cuDNN on an H100 after an 84-127 s compile, which is the case ``auto`` turns on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Optional, cast

import torch
from torch import nn

from rnn.config import COMPILE_SETTINGS
from rnn.lnlstm import eager_under_compile
from rnn.run_state import capture_rng, restore_rng
from rnn.step import TrainStep, lm_losses

log = logging.getLogger(__name__)

#: ``auto`` compiles the torch-loop layer-norm LSTM only when the run has at least this many steps
#: left. ``python -m bench.compile --cases ln-torch`` (char-rnn shape, CPU, 1 thread; see
#: docs/benchmarks.md), three runs: a cold compile of 299-335 s, and a step 1.14-1.27x faster
#: (302 -> 266, 369 -> 307, 414 -> 326 ms), so compiling breaks even after 3,800-8,300 steps.
#: 25,000 steps is about 3x the worst (compile time also grows with T: the loop is unrolled).
AUTO_MIN_STEPS = 25_000
#: ``auto`` with a wall-clock budget (``max_time_s``): compile only when it is at least two hours
#: (25,000 of those 266-326 ms compiled steps take 1.8-2.3 hours), whatever the step budget.
AUTO_MIN_SECONDS = 7200.0


@dataclass(frozen=True)
class CompileResult:
    """What :func:`compile_model` / :func:`compile_train_step` did.

    ``module``: what the training forward calls (the compiled wrapper, or the model itself).
    ``compiled``: True when ``module`` is compiled and its warm-up ran. ``compile_s``: seconds the
    warm-up took (the compile plus one forward/backward); 0 when not compiled. ``reason``: why it
    is or is not compiled, for the log. ``error``: why a requested compile fell back to eager.
    """

    module: nn.Module
    compiled: bool
    compile_s: float = 0.0
    reason: str = ""
    error: Optional[str] = None


def compile_mode(device: torch.device) -> Optional[str]:
    """``reduce-overhead`` (CUDA graphs) on CUDA; Inductor's default (None) elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else None


def decide(
    setting: str,
    device: torch.device,
    recurrence: Optional[str],
    *,
    total_steps: Optional[int],
    max_time_s: Optional[float],
) -> tuple[bool, str]:
    """Whether ``train.compile: setting`` compiles, and why.

    ``recurrence`` is the layer-norm LSTM's path (``fused-cpu``, ``triton``, ``torch``), the min
    cells' scan (``parallel-scan``, ``sequential-scan``), or None for the ``nn.LSTM``/``nn.GRU``/
    ``nn.RNN`` cells. ``total_steps`` (None: unbounded, as in a throughput trial, whose figure
    stands for a long run) and ``max_time_s`` size the run.
    """
    if setting == "off":
        return False, "train.compile is off"
    if setting == "on":
        return True, "train.compile is on"
    if setting != "auto":
        raise ValueError(f"train.compile: expected one of {', '.join(COMPILE_SETTINGS)} (got {setting!r})")
    if recurrence in ("parallel-scan", "sequential-scan"):
        return False, "auto: the min cells run eagerly (compiling them has not been measured)"
    if recurrence != "torch":
        what = "the fused recurrence runs eagerly inside a compiled graph" if recurrence else \
            "dynamo does not trace the oneDNN/cuDNN recurrent op"
        return False, f"auto: compiling measured no faster for this model ({what})"
    if device.type not in ("cpu", "cuda"):
        return False, f"auto: compiling on {device.type} is not measured"
    if total_steps is not None and total_steps < AUTO_MIN_STEPS:
        return False, f"auto: {total_steps} steps are too few to repay the compile (needs >= {AUTO_MIN_STEPS})"
    if max_time_s is not None and max_time_s < AUTO_MIN_SECONDS:  # the run stops at whichever comes first
        return False, (f"auto: a {max_time_s:g}s budget is too short to repay the compile "
                       f"(needs >= {AUTO_MIN_SECONDS:g}s)")
    return True, "auto: the layer-norm LSTM's torch loop compiles into fused steps and the run is long"


def compile_model(
    model: nn.Module,
    device: torch.device,
    *,
    mode: Optional[str] = None,
    warm_up: Optional[Callable[[nn.Module], None]] = None,
) -> CompileResult:
    """``torch.compile(model, mode=mode)``, compiled now by ``warm_up(compiled)`` when given.

    ``warm_up`` runs one forward and backward through its argument (timed as ``compile_s``).
    Any exception from ``torch.compile`` or the warm-up is logged once as a warning and the eager
    ``model`` comes back with ``compiled=False``. Without ``warm_up`` the compile happens on first
    use and errors surface there. Dynamo's caches are reset first: this process compiles one
    model at a time, and a throughput trial's batch sizes would otherwise pile up recompiles
    against dynamo's limit.
    """
    torch._dynamo.reset()
    eager_under_compile(model)
    start = time.perf_counter()
    try:
        compiled = cast(nn.Module, torch.compile(model, mode=mode, dynamic=False))  # an OptimizedModule
        if warm_up is not None:
            warm_up(compiled)
    except Exception as e:  # noqa: BLE001 (any compile failure means: run eagerly)
        text = str(e).strip()
        first = text.splitlines()[0][:300] if text else ""
        error = f"{type(e).__name__}: {first}" if first else type(e).__name__
        log.warning("torch.compile failed, training eagerly instead: %s", error)
        log.debug("torch.compile failure", exc_info=True)
        for p in model.parameters():
            p.grad = None  # a backward that failed half way may have left some
        return CompileResult(model, False, 0.0, "compile failed", error)
    seconds = time.perf_counter() - start if warm_up is not None else 0.0
    return CompileResult(compiled, True, seconds, "compiled")


def warm_up_step(step: TrainStep) -> Callable[[nn.Module], None]:
    """One forward/backward of ``step``'s loss through a module, leaving no trace on the run:
    its own batch generator, RNG states restored, gradients dropped."""

    def run(module: nn.Module) -> None:
        generator = torch.Generator(device=step.device).manual_seed(step.train.seed)
        window = step.data.sample_batch(step.batch_size, generator)  # (B, T+1)
        saved = capture_rng(step.generator)  # dropout draws from the CPU and device generators
        try:
            with step.autocast:
                losses = lm_losses(module, window, step.train.label_smoothing)  # type: ignore[arg-type]
            losses.objective.backward()
        finally:
            restore_rng(saved, step.generator)
            for p in step.model.parameters():
                p.grad = None

    return run


def compile_train_step(
    step: TrainStep,
    setting: str,
    *,
    recurrence: Optional[str],
    total_steps: Optional[int],
    max_time_s: Optional[float],
) -> CompileResult:
    """Decide, compile and warm up ``step``'s forward per ``train.compile: setting``.

    On success ``step.forward_model`` is the compiled wrapper; otherwise it stays the model.
    Returns what happened (``compiled``, ``compile_s``), which the trainer reports in the
    ``start`` event and the trial row.
    """
    wanted, reason = decide(setting, step.device, recurrence, total_steps=total_steps, max_time_s=max_time_s)
    if not wanted:
        log.info("not compiling: %s", reason)
        return CompileResult(step.model, False, 0.0, reason)
    result = compile_model(step.model, step.device, mode=compile_mode(step.device), warm_up=warm_up_step(step))
    if result.compiled:
        step.forward_model = result.module
        step.cudagraph_steps = step.device.type == "cuda"
        log.info("compiled the model in %.1fs (%s)", result.compile_s, reason)
        return replace(result, reason=reason)
    return result
