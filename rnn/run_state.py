"""A training run's live state, and the checkpoint dict that saves and restores it exactly.

:class:`Run` holds what the trainer builds once (data, model, step, schedule) and what changes
(:class:`RunState`, device-side sums). :func:`checkpoint_state` and :func:`restore_run` turn it
into a plain dict and back: weights, optimiser, schedule, scaler, RNG states, progress, with
``train.stateful`` the streams' position and the carried state, and the config and tokenizer that
rebuild the model.

Exactness. On the CPU a resumed run is the uninterrupted one bit for bit. On CUDA and MPS the
device's default generator is saved and restored too (dropout draws from it), as is the
trainer's data generator. What cannot be restored: cuDNN's fused RNN dropout (``nn.LSTM`` with
``dropout > 0`` between layers, on CUDA) keeps its own dropout state, seeded once per process,
which ``torch.cuda.set_rng_state`` does not reach; after a resume its masks differ, so such a
run continues statistically alike but not bit-identically. The layer-norm LSTM and the
embedding/output dropout draw from the default generator and are restored.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import torch

from rnn.config import RunConfig
from rnn.data import LMData
from rnn.errors import CheckpointError
from rnn.events import EvalRecord, TrialStatus
from rnn.models import LanguageModel
from rnn.state import RecurrentState, map_state
from rnn.step import TrainStep

#: Schedules whose shape depends on the step budget: a resume with another budget is refused.
BUDGET_SHAPED = ("onecycle", "cosine", "step")


class RunState:
    """What changes as a run progresses and what a checkpoint restores."""

    def __init__(self) -> None:
        self.step = 0
        self.best_metric: Optional[float] = None  # lowest validation loss so far
        self.best_record: Optional[EvalRecord] = None
        self.best_path: Optional[Path] = None  # the best checkpoint written in this run folder
        self.patience_ref: Optional[float] = None  # the last value that improved by min_delta
        self.bad_evals = 0
        self.train_time_s = 0.0
        #: schedule_by: time: training seconds before the current stretch of steps (evaluations
        #: and checkpoints excluded), the clock the schedule and the time budget run on.
        self.trained_s = 0.0
        self.eval_time_s = 0.0  # seconds spent evaluating, across resumes
        self.evals: list[EvalRecord] = []
        self.window_steps = 0  # steps summed into the current train-loss window


class Run:
    """One run's set-up objects, device-side accumulators and progress."""

    def __init__(
        self,
        device: torch.device,
        data: LMData,
        model: LanguageModel,
        precision: str,
        total_steps: Optional[int],
        train_step: TrainStep,
        scheduler: Any,
    ) -> None:
        self.device, self.data, self.model, self.precision = device, data, model, precision
        self.total_steps, self.train_step, self.scheduler = total_steps, train_step, scheduler
        self.per_step_schedule = scheduler is not None and train_step.train.scheduler != "plateau"
        self.st = RunState()
        self.status = TrialStatus.COMPLETED
        self.error: Optional[str] = None
        # Device-side accumulators: read back only at check points.
        self.nll_sum = torch.zeros((), device=device)  # forward, unsmoothed: train_loss
        self.objective_sum = torch.zeros((), device=device)  # what is minimised: train_objective
        self.grad_norm = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        # train.compile: whether the training forward is compiled, and the seconds it took.
        self.compiled = False
        self.compile_s = 0.0
        #: Whether float32 matmuls run TF32 (rnn.device.use_tf32).
        self.tf32 = False
        self.clock_start = time.monotonic()  # set again by the loop, minus the time before a resume
        self.window_start = time.monotonic()
        # Heartbeats (Trainer(heartbeat_s=...)): when the last one was sent (the trainer's clock), at which step.
        self.beat_at = 0.0
        self.beat_step = 0
        # schedule_by: time: when the current stretch of training steps began (the trainer's clock).
        self.stretch_start = 0.0

    def advance_schedule(self) -> None:
        """Step a per-step lr schedule after a training step, unless the fp16 scaler skipped it:
        the schedule counts optimiser updates, not attempts."""
        if self.per_step_schedule and not self.train_step.skipped:
            self.scheduler.step()

    def advance_schedule_to(self, tick: int) -> None:
        """schedule_by: time: step the schedule until it has taken ``tick`` steps (its ticks are
        fractions of the time budget, :data:`rnn.optim.SCHEDULE_TICKS` in all)."""
        while self.scheduler is not None and self.scheduler.last_epoch < tick:
            self.scheduler.step()

    def elapsed(self) -> float:
        """Training seconds so far, including those before a resume."""
        return time.monotonic() - self.clock_start


def capture_rng(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The CPU generator, the data generator, and the default generator of the data's device."""
    rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if generator.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(generator.device)
    elif generator.device.type == "mps":
        rng["mps"] = torch.mps.get_rng_state()
    return rng


def restore_rng(rng: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    """Undo :func:`capture_rng` (device states only where they were saved for that device)."""
    torch.set_rng_state(rng["torch"].cpu())
    generator.set_state(rng["generator"].cpu())
    if "cuda" in rng and generator.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"].cpu(), generator.device)
    if "mps" in rng and generator.device.type == "mps":
        torch.mps.set_rng_state(rng["mps"].cpu())


def checkpoint_state(run: Run, config: RunConfig) -> dict[str, Any]:
    """Everything that continues ``run`` exactly, as a plain dict for :func:`rnn.checkpoint.save_checkpoint`."""
    st, ts = run.st, run.train_step
    assert ts.optimizer is not None
    return {
        "config": config.to_dict(),
        "model": run.model.state_dict(),
        "optimizer": ts.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
        "scaler": ts.scaler.state_dict(),
        "total_steps": run.total_steps,
        "step": st.step,
        "best_metric": st.best_metric,
        "best_step": st.best_record.step if st.best_record else None,
        "patience_ref": st.patience_ref,
        "bad_evals": st.bad_evals,
        "train_time_s": st.train_time_s,
        "trained_s": st.trained_s,
        "eval_time_s": st.eval_time_s,
        "window": {
            "nll_sum": run.nll_sum.detach().cpu(),
            "objective_sum": run.objective_sum.detach().cpu(),
            "steps": st.window_steps,
        },
        "evals": [asdict(r) for r in st.evals],
        "rng": capture_rng(ts.generator),
        "streams": _streams_state(ts),
        "tokenizer": run.data.tokenizer.to_state(),
        "vocab_size": run.data.vocab_size,
        "corpus_sha256": run.data.corpus.sha256,
    }


def restore_run(ckpt: dict[str, Any], run: Run, config: RunConfig) -> None:
    """Load a checkpoint dict into a freshly set-up ``run`` of ``config``.

    Raises:
        CheckpointError: the checkpoint is of another model or data config, or of another step
            budget under a schedule whose shape depends on it.
    """
    saved = RunConfig.from_dict(ckpt["config"])
    if saved.model != config.model or saved.data != config.data:
        raise CheckpointError(
            "checkpoint was written for a different model or data config; "
            f"checkpoint model={saved.model}, this run model={config.model}"
        )
    name = config.train.scheduler
    saved_total = ckpt.get("total_steps", (ckpt.get("scheduler") or {}).get("total_steps"))
    by_steps = config.train.schedule_by == "steps"
    if by_steps and name in BUDGET_SHAPED and saved_total is not None and saved_total != run.total_steps:
        raise CheckpointError(
            f"checkpoint was written for a {saved_total}-step {name} schedule but this run's budget is "
            f"{run.total_steps} steps; resume with the same max_steps/max_epochs (a {name} schedule "
            "cannot be stretched mid-run), or start a new run"
        )
    st, ts = run.st, run.train_step
    assert ts.optimizer is not None
    run.model.load_state_dict(ckpt["model"])
    ts.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scheduler is not None and ckpt.get("scheduler") is not None:
        run.scheduler.load_state_dict(ckpt["scheduler"])
    ts.scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"], ts.generator)
    st.step = int(ckpt["step"])
    st.best_metric = ckpt["best_metric"]
    st.patience_ref = ckpt.get("patience_ref", st.best_metric)
    st.bad_evals = int(ckpt["bad_evals"])
    st.train_time_s = float(ckpt["train_time_s"])
    st.trained_s = float(ckpt.get("trained_s", 0.0))  # not in checkpoints written before schedule_by
    st.eval_time_s = float(ckpt.get("eval_time_s", 0.0))  # nor before eval_time_s
    st.evals = [EvalRecord(**r) for r in ckpt["evals"]]
    best_step = ckpt.get("best_step", st.step)  # a best checkpoint is written at its best step
    st.best_record = next((r for r in reversed(st.evals) if r.step == best_step), None)
    saved_streams = ckpt.get("streams")
    if ts.streams is not None and saved_streams is not None:  # train.stateful: where the streams were
        ts.streams.position = saved_streams["position"]
        ts.state = _to(saved_streams["state"], run.device)
    window = ckpt.get("window")
    if window is not None:  # a paused run resumes inside a train-loss window
        run.nll_sum.copy_(window["nll_sum"].to(run.device))
        run.objective_sum.copy_(window["objective_sum"].to(run.device))
        st.window_steps = int(window["steps"])


def _streams_state(ts: TrainStep) -> Optional[dict[str, Any]]:
    """train.stateful: the streams' position and the state carried into the next step."""
    if ts.streams is None:
        return None
    return {"position": ts.streams.position, "state": _to(ts.state, torch.device("cpu"))}


def _to(state: Optional[RecurrentState], device: torch.device) -> Optional[RecurrentState]:
    return None if state is None else map_state(state, lambda t: t.to(device))
