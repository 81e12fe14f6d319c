"""The training loop: one run of one recurrent language model.

``Trainer(run_config, run_dir).iter_fit()`` yields :class:`~rnn.events.TrainEvent` objects
(start, eval, checkpoint, end); ``fit()`` consumes them and returns the
:class:`~rnn.events.TrainResult`. The orchestrator streams the same events out of a Ray actor,
a notebook just calls ``fit()``.

The hot loop never reads a value back to the host: losses, gradient norms and the
first non-finite step are accumulated on the device and read at check points only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional, Union

import torch

from rnn.checkpoint import load_checkpoint, save_checkpoint
from rnn.config import ModelConfig, RunConfig
from rnn.data import LMData, prepare_data
from rnn.device import detect_device, device_report, resolve_precision
from rnn.errors import CheckpointError
from rnn.evaluate import eval_batch_size, evaluate
from rnn.events import EvalRecord, TrainEvent, TrainResult, TrialStatus
from rnn.models import LanguageModel, build_model
from rnn.optim import build_scheduler
from rnn.step import TrainStep, lm_loss  # noqa: F401  (lm_loss: part of this module's API)

log = logging.getLogger(__name__)

BEST_CHECKPOINT = "best.pt"
#: The resume checkpoint a paused run writes (see ``Trainer.iter_fit(pause_at_step=...)``).
LAST_CHECKPOINT = "last.pt"
#: Read the device-side divergence flag and the wall clock at most this many steps apart.
CHECK_EVERY = 50


class Trainer:
    """Trains one model on one corpus as described by a :class:`~rnn.config.RunConfig`.

    Args:
        config: data, model and training settings.
        run_dir: where the best checkpoint is written (``run_dir/best.pt``).
        device: overrides ``config.train.device`` when given.
        num_threads: torch intra-op threads (a Ray actor sets this to its CPU reservation).
        data_dir: where to look for downloadable corpora before downloading.
        cache_dir: where trained tokenizers are cached.
        step_hook: called as ``step_hook(step, model)`` after every optimiser step; for
            instrumentation and fault-injection drills. ``None`` costs nothing.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: Union[str, Path],
        *,
        device: Union[str, torch.device, None] = None,
        num_threads: Optional[int] = None,
        data_dir: Union[str, Path, None] = None,
        cache_dir: Union[str, Path, None] = None,
        step_hook: Optional[Callable[[int, LanguageModel], None]] = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self._device_override = device
        self._num_threads = num_threads
        self._data_dir = data_dir
        self._cache_dir = cache_dir
        self._step_hook = step_hook

    # ------------------------------------------------------------------ public API
    def fit(
        self,
        resume_from: Union[str, Path, None] = None,
        on_event: Optional[Callable[[TrainEvent], None]] = None,
    ) -> TrainResult:
        """Run to the end and return the result; ``on_event`` sees every event."""
        result: Optional[TrainResult] = None
        for event in self.iter_fit(resume_from):
            if on_event is not None:
                on_event(event)
            if event.kind == "end":
                result = event.result
        assert result is not None
        return result

    def iter_fit(
        self,
        resume_from: Union[str, Path, bytes, None] = None,
        *,
        pause_at_step: Optional[int] = None,
    ) -> Iterator[TrainEvent]:
        """Train, yielding events; the last event has kind ``end``.

        ``resume_from`` (a checkpoint path or its bytes) continues that run exactly: same
        steps, same batches, same schedule. Exceptions (out of memory, a bad corpus) propagate.

        ``pause_at_step`` (below the run's step budget) stops the run there for a scheduler such
        as successive halving: the trainer evaluates (unless that step was just evaluated),
        writes a resume checkpoint of the current state to ``run_dir/last.pt``, yields a
        ``paused`` event naming it, and ends with status :attr:`TrialStatus.PAUSED`. The lr
        schedule still spans the full budget, and the pause evaluation changes no decision
        (best, patience, plateau), so resuming from ``last.pt`` continues the run exactly as if
        it had not stopped. A ``pause_at_step`` at or past the budget is ignored.
        """
        run = self._set_up(resume_from)
        if pause_at_step is not None and pause_at_step <= run.st.step:
            raise ValueError(
                f"pause_at_step={pause_at_step} is not past the step this run resumes from ({run.st.step})"
            )
        yield self._start_event(run, resumed=resume_from is not None)
        yield from self._loop(run, pause_at_step)
        yield TrainEvent("end", run.st.step, result=self._result(run))

    # ------------------------------------------------------------------ set-up
    def _set_up(self, resume_from: Union[str, Path, bytes, None]) -> _Run:
        """Device, data, model, optimiser, schedule and run state, restored from a checkpoint if given."""
        cfg = self.config
        tc = cfg.train
        if self._num_threads:
            torch.set_num_threads(self._num_threads)
        device = detect_device(str(self._device_override) if self._device_override else tc.device)
        torch.manual_seed(tc.seed)
        data = prepare_data(cfg.data, device, cache_dir=self._cache_dir, data_dir=self._data_dir)
        model = build_model(cfg.model, data.vocab_size).to(device)
        precision = resolve_precision(tc.amp, device, batch_size=tc.batch_size)
        total_steps = self._total_steps(data)
        train_step = TrainStep(model, data, tc, precision, tc.batch_size)
        assert train_step.optimizer is not None  # released only after the loop
        plateau_patience = max(1, tc.early_stopping.patience // 2) if tc.early_stopping else 2
        scheduler = build_scheduler(train_step.optimizer, tc, total_steps, plateau_patience)
        run = _Run(device, data, model, precision, total_steps, train_step, scheduler)
        if resume_from is not None:
            ckpt = load_checkpoint(resume_from, map_location=device)
            self._restore(ckpt, run)
            log.info("resumed from step %d (best val loss %s)", run.st.step, run.st.best_metric)
        return run

    def _start_event(self, run: _Run, resumed: bool) -> TrainEvent:
        report = device_report(run.device)
        return TrainEvent(
            "start",
            run.st.step,
            info={
                "params": run.model.num_parameters(),
                "device": run.device.type,
                "device_name": report.get("device_name"),
                "precision": run.precision,
                "recurrence": run.model.recurrence_path(run.device, run.precision),
                "vocab_size": run.data.vocab_size,
                "corpus": run.data.corpus.name,
                "corpus_sha256": run.data.corpus.sha256,
                "total_steps": run.total_steps,
                "resumed_from_step": run.st.step if resumed else None,
            },
        )

    # ------------------------------------------------------------------ the loop
    def _loop(self, run: _Run, pause_at_step: Optional[int]) -> Iterator[TrainEvent]:
        """Step until the budget, a stop decision or the pause step; sets ``run.status``."""
        tc = self.config.train
        st, total = run.st, run.total_steps
        run.clock_start = time.monotonic() - st.train_time_s
        run.window_start = time.monotonic()
        run.model.train()
        while total is None or st.step < total:
            loss, run.grad_norm = run.train_step()  # on the device; nothing read back here
            if run.per_step_schedule:
                run.scheduler.step()
            run.loss_sum += loss
            bad = ~torch.isfinite(loss)
            run.first_bad = torch.where(bad & (run.first_bad < 0), st.step + 1, run.first_bad)
            st.step += 1
            st.window_steps += 1
            if self._step_hook is not None:
                self._step_hook(st.step, run.model)

            at_eval = st.step % tc.eval_every == 0 or st.step == total
            at_pause = st.step == pause_at_step and (total is None or st.step < total)
            if not (at_eval or at_pause or st.step % CHECK_EVERY == 0):
                continue
            bad_step = int(run.first_bad.item())
            if bad_step >= 0:
                run.status, run.error = TrialStatus.DIVERGED, f"training loss became non-finite at step {bad_step}"
                log.warning(run.error)
                return
            out_of_time = tc.max_time_s is not None and run.elapsed() >= tc.max_time_s
            if at_eval or out_of_time:
                stop = yield from self._evaluate_and_decide(run)
                if stop or out_of_time:
                    return
            if at_pause:
                yield from self._pause(run, evaluated=at_eval)
                return

    def _evaluate_and_decide(self, run: _Run) -> Generator[TrainEvent, None, bool]:
        """A scheduled evaluation: record it, step a plateau schedule, save the best, count
        patience. Returns True when the run must stop (divergence, early stopping)."""
        st, es = run.st, self.config.train.early_stopping
        rec = self._record(run)
        yield TrainEvent("eval", st.step, record=rec)
        metric = rec.val_loss if run.data.num_val_targets > 0 else rec.train_loss
        if not math.isfinite(metric):
            run.status, run.error = TrialStatus.DIVERGED, f"validation loss became non-finite at step {st.step}"
            return True
        if run.scheduler is not None and not run.per_step_schedule:
            run.scheduler.step(metric)
        if st.best_metric is None or metric < st.best_metric - (es.min_delta if es else 0.0):
            st.best_metric, st.best_record, st.bad_evals = metric, rec, 0
            st.train_time_s = run.elapsed()
            path = self._save(run, self.run_dir / BEST_CHECKPOINT)
            yield TrainEvent("checkpoint", st.step, checkpoint=str(path), record=rec)
        else:
            st.bad_evals += 1
            if es is not None and st.bad_evals >= es.patience:
                run.status = TrialStatus.EARLY_STOPPED
                log.info("early stop at step %d: no improvement in %d evaluations", st.step, es.patience)
                return True
        run.window_start = time.monotonic()
        run.model.train()
        return False

    def _pause(self, run: _Run, evaluated: bool) -> Iterator[TrainEvent]:
        """Evaluate if needed (a measurement only: it decides nothing, so the resumed run is the
        uninterrupted one), write ``last.pt`` and end the run as paused."""
        st = run.st
        if not evaluated:
            rec = self._record(run, reset_window=False)  # the window goes on after the resume
            yield TrainEvent("eval", st.step, record=rec)
            if not math.isfinite(rec.val_loss if run.data.num_val_targets > 0 else rec.train_loss):
                run.status, run.error = TrialStatus.DIVERGED, f"validation loss became non-finite at step {st.step}"
                return
        st.train_time_s = run.elapsed()
        path = self._save(run, self.run_dir / LAST_CHECKPOINT)
        run.status = TrialStatus.PAUSED
        log.info("paused at step %d; resume from %s", st.step, path)
        yield TrainEvent("paused", st.step, checkpoint=str(path), record=st.evals[-1] if st.evals else None)

    def _record(self, run: _Run, reset_window: bool = True) -> EvalRecord:
        """Evaluate now and append the record; the train-loss window restarts unless told not to."""
        st, B, T = run.st, self.config.train.batch_size, self.config.data.seq_len
        train_time = time.monotonic() - run.window_start
        assert run.train_step.optimizer is not None
        val = evaluate(run.model, run.data, run.train_step.autocast, eval_batch_size(B, T, run.data.vocab_size))
        rec = EvalRecord(
            step=st.step,
            epoch=st.step / run.data.steps_per_epoch(B),
            train_loss=float((run.loss_sum / max(1, st.window_steps)).item()),
            val_loss=val.loss,
            val_bpc=val.bpc,
            val_perplexity=val.perplexity,
            val_accuracy=val.accuracy,
            lr=run.train_step.optimizer.param_groups[0]["lr"],
            grad_norm=float(run.grad_norm.float().item()),
            samples_per_s=st.window_steps * B / max(train_time, 1e-9),
            tokens_per_s=st.window_steps * B * T / max(train_time, 1e-9),
            elapsed_s=run.elapsed(),
        )
        st.evals.append(rec)
        if reset_window:
            run.loss_sum.zero_()
            st.window_steps = 0
        return rec

    def _result(self, run: _Run) -> TrainResult:
        st, best = run.st, run.st.best_record
        best_path = self.run_dir / BEST_CHECKPOINT
        return TrainResult(
            status=run.status,
            steps=st.step,
            params=run.model.num_parameters(),
            device=run.device.type,
            precision=run.precision,
            train_time_s=run.elapsed(),
            best_val_loss=best.val_loss if best else None,
            best_val_bpc=best.val_bpc if best else None,
            best_val_accuracy=best.val_accuracy if best else None,
            best_step=best.step if best else None,
            best_checkpoint=str(best_path) if best else None,
            corpus_sha256=run.data.corpus.sha256,
            vocab_size=run.data.vocab_size,
            error=run.error,
            evals=tuple(st.evals),
        )

    def _total_steps(self, data: LMData) -> Optional[int]:
        tc = self.config.train
        budgets = []
        if tc.max_steps is not None:
            budgets.append(tc.max_steps)
        if tc.max_epochs is not None:
            budgets.append(max(1, math.ceil(tc.max_epochs * data.steps_per_epoch(tc.batch_size))))
        if not budgets and tc.max_time_s is None:
            raise ValueError("no training budget: set train.max_steps, train.max_epochs or train.max_time_s")
        return min(budgets) if budgets else None

    def _save(self, run: _Run, path: Path) -> Path:
        """Everything that continues the run exactly: weights, optimiser, schedule, scaler, RNG,
        progress, and the config and tokenizer that rebuild the model."""
        st, generator = run.st, run.train_step.generator
        assert run.train_step.optimizer is not None
        rng = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
        if torch.cuda.is_available() and generator.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(generator.device)
        state = {
            "config": self.config.to_dict(),
            "model": run.model.state_dict(),
            "optimizer": run.train_step.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict() if run.scheduler is not None else None,
            "scaler": run.train_step.scaler.state_dict(),
            "step": st.step,
            "best_metric": st.best_metric,
            "best_step": st.best_record.step if st.best_record else None,
            "bad_evals": st.bad_evals,
            "train_time_s": st.train_time_s,
            "window": {"loss_sum": run.loss_sum.detach().cpu(), "steps": st.window_steps},
            "evals": [asdict(r) for r in st.evals],
            "rng": rng,
            "tokenizer": run.data.tokenizer.to_state(),
            "vocab_size": run.data.vocab_size,
            "corpus_sha256": run.data.corpus.sha256,
        }
        return save_checkpoint(path, state)

    def _restore(self, ckpt: dict[str, Any], run: _Run) -> None:
        saved = RunConfig.from_dict(ckpt["config"])
        if saved.model != self.config.model or saved.data != self.config.data:
            raise CheckpointError(
                "checkpoint was written for a different model or data config; "
                f"checkpoint model={saved.model}, this run model={self.config.model}"
            )
        st, ts, generator = run.st, run.train_step, run.train_step.generator
        assert ts.optimizer is not None
        run.model.load_state_dict(ckpt["model"])
        ts.optimizer.load_state_dict(ckpt["optimizer"])
        if run.scheduler is not None and ckpt.get("scheduler") is not None:
            run.scheduler.load_state_dict(ckpt["scheduler"])
        ts.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        generator.set_state(ckpt["rng"]["generator"].cpu())
        if "cuda" in ckpt["rng"] and generator.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), generator.device)
        st.step = int(ckpt["step"])
        st.best_metric = ckpt["best_metric"]
        st.bad_evals = int(ckpt["bad_evals"])
        st.train_time_s = float(ckpt["train_time_s"])
        st.evals = [EvalRecord(**r) for r in ckpt["evals"]]
        best_step = ckpt.get("best_step", st.step)  # a best checkpoint is written at its best step
        st.best_record = next((r for r in reversed(st.evals) if r.step == best_step), None)
        window = ckpt.get("window")
        if window is not None:  # a paused run resumes inside a train-loss window
            run.loss_sum.copy_(window["loss_sum"].to(run.device))
            st.window_steps = int(window["steps"])


class _RunState:
    """What changes as a run progresses and what a checkpoint restores."""

    def __init__(self) -> None:
        self.step = 0
        self.best_metric: Optional[float] = None
        self.best_record: Optional[EvalRecord] = None
        self.bad_evals = 0
        self.train_time_s = 0.0
        self.evals: list[EvalRecord] = []
        self.window_steps = 0  # steps summed into the current train-loss window


class _Run:
    """One run's set-up objects, device-side accumulators and progress, shared by the loop's parts."""

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
        self.st = _RunState()
        self.status = TrialStatus.COMPLETED
        self.error: Optional[str] = None
        # Device-side accumulators: read back only at check points.
        self.loss_sum = torch.zeros((), device=device)
        self.grad_norm = torch.zeros((), device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.clock_start = time.monotonic()  # so that elapsed() counts the time before a resume
        self.window_start = time.monotonic()

    def elapsed(self) -> float:
        """Training seconds so far, including those before a resume."""
        return time.monotonic() - self.clock_start


def model_config_from_checkpoint(ckpt: dict[str, Any]) -> ModelConfig:
    """The model config stored in a checkpoint."""
    return ModelConfig(**ckpt["config"]["model"])
