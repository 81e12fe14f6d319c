"""The training loop: one run of one recurrent language model.

``Trainer(run_config, run_dir).iter_fit()`` yields :class:`~rnn.events.TrainEvent` objects
(start, eval, checkpoint, end); ``fit()`` consumes them and returns the
:class:`~rnn.events.TrainResult`. The orchestrator streams the same events out of a Ray actor,
a notebook just calls ``fit()``.

In fp32 and bf16 the hot loop never reads a value back to the host: losses, gradient norms
and the first non-finite step are accumulated on the device and read at check points only.
In fp16 the GradScaler reads once per step whether the gradients were finite (see
:class:`rnn.step.TrainStep`). The wall clock is read every step; it costs no device sync.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, Optional, Union

import torch

from rnn.checkpoint import load_checkpoint, save_checkpoint
from rnn.compile import compile_train_step
from rnn.config import ModelConfig, RunConfig
from rnn.data import LMData, prepare_data
from rnn.device import detect_device, device_report, resolve_precision, use_tf32
from rnn.evaluate import eval_batch_size, evaluate
from rnn.events import EvalRecord, EventKind, TrainEvent, TrainResult, TrialStatus
from rnn.models import LanguageModel, build_model
from rnn.optim import SCHEDULE_TICKS, build_scheduler
from rnn.run_state import Run, checkpoint_state, restore_run
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
        heartbeat_s: send a ``heartbeat`` event at most this often between evaluations (and one
            as each evaluation starts), so a watcher can tell a live run from a hung one. It
            reads ``clock`` each step (no device sync); the event's train loss is one read-back
            per heartbeat. ``None``: no heartbeats.
        clock: the clock of heartbeats and of a ``schedule_by: time`` run's training time
            (``time.monotonic``; a test passes a fake one).
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
        heartbeat_s: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if heartbeat_s is not None and not heartbeat_s >= 0:
            raise ValueError(f"heartbeat_s must be >= 0 seconds, got {heartbeat_s!r}")
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        #: schedule_by: time: the schedule and the time budget run on training time (this clock).
        self._by_time = config.train.schedule_by == "time"
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
            if event.kind is EventKind.END:
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
        run = yield from self._set_up(resume_from)
        if pause_at_step is not None and pause_at_step <= run.st.step:
            raise ValueError(
                f"pause_at_step={pause_at_step} is not past the step this run resumes from ({run.st.step})"
            )
        yield self._start_event(run, resumed=resume_from is not None)
        yield from self._loop(run, pause_at_step)
        yield TrainEvent(EventKind.END, run.st.step, result=self._result(run))

    # ------------------------------------------------------------------ set-up
    def _set_up(self, resume_from: Union[str, Path, bytes, None]) -> Generator[TrainEvent, None, Run]:
        """Device, data, model, optimiser, schedule and run state, restored from a checkpoint if
        given. With heartbeats on, a ``preparing data`` and a ``compiling`` heartbeat say which of
        the two slow steps of set-up is under way (each sends nothing until it ends)."""
        cfg = self.config
        tc = cfg.train
        if self._num_threads:
            torch.set_num_threads(self._num_threads)
        device = detect_device(str(self._device_override) if self._device_override else tc.device)
        tf32 = use_tf32(device)
        torch.manual_seed(tc.seed)
        yield from self._phase(0, "preparing data")
        data = prepare_data(cfg.data, device, cache_dir=self._cache_dir, data_dir=self._data_dir)
        model = build_model(cfg.model, data.vocab_size).to(device)
        precision = resolve_precision(tc.amp, device, batch_size=tc.batch_size)
        total_steps = self._total_steps(data)
        train_step = TrainStep(model, data, tc, precision, tc.batch_size)
        assert train_step.optimizer is not None  # released only after the loop
        plateau_patience = max(1, tc.early_stopping.patience // 2) if tc.early_stopping else 2
        if self._by_time and tc.max_time_s is None:
            raise ValueError("train.schedule_by: time needs train.max_time_s, the budget the schedule spans")
        scheduler = build_scheduler(train_step.optimizer, tc, SCHEDULE_TICKS if self._by_time else total_steps,
                                    plateau_patience)
        run = Run(device, data, model, precision, total_steps, train_step, scheduler)
        if resume_from is not None:
            ckpt = load_checkpoint(resume_from, map_location=device)
            restore_run(ckpt, run, self.config)
            log.info("resumed from step %d (best val loss %s)", run.st.step, run.st.best_metric)
            best = self.run_dir / BEST_CHECKPOINT
            same_file = isinstance(resume_from, (str, Path)) and Path(resume_from).resolve() == best.resolve()
            if run.st.best_record is not None and run.st.best_record.step == run.st.step and not same_file:
                # The resumed state is the best one: write it here too, so that the result's
                # best_checkpoint names a file of this run folder (a resume into a new folder).
                run.st.best_path = self._save(run, best)
        # After the restore, so that `auto` sizes the steps left; the warm-up leaves the RNG
        # states, the batch generator and the gradients as it found them.
        remaining = None if total_steps is None else total_steps - run.st.step
        if tc.compile != "off":
            yield from self._phase(run.st.step, "compiling")
        compiled = compile_train_step(
            train_step, tc.compile, recurrence=model.recurrence_path(device, precision),
            total_steps=remaining, max_time_s=tc.max_time_s,
        )
        run.compiled, run.compile_s = compiled.compiled, compiled.compile_s
        run.tf32 = tf32
        return run

    def _start_event(self, run: Run, resumed: bool) -> TrainEvent:
        report = device_report(run.device)
        return TrainEvent(
            EventKind.START,
            run.st.step,
            info={
                "params": run.model.num_parameters(),
                "device": run.device.type,
                "device_name": report.get("device_name"),
                "precision": run.precision,
                "recurrence": run.model.recurrence_path(run.device, run.precision),
                "compiled": run.compiled,
                "compile_s": run.compile_s,
                "tf32": run.tf32,
                "vocab_size": run.data.vocab_size,
                "corpus": run.data.corpus.name,
                "corpus_sha256": run.data.corpus.sha256,
                "unigram_loss": run.data.unigram_loss,
                "val_coverage": run.data.val_coverage,
                "total_steps": run.total_steps,
                "resumed_from_step": run.st.step if resumed else None,
            },
        )

    # ------------------------------------------------------------------ the loop
    def _loop(self, run: Run, pause_at_step: Optional[int]) -> Iterator[TrainEvent]:
        """Step until the budget, a stop decision or the pause step; sets ``run.status``."""
        tc = self.config.train
        st, total = run.st, run.total_steps
        run.clock_start = time.monotonic() - st.train_time_s
        run.window_start = time.monotonic()
        run.beat_at, run.beat_step = self._clock(), st.step
        time_budget = tc.max_time_s if self._by_time else None
        if self._by_time:
            run.stretch_start = self._clock()
        run.model.train()
        while total is None or st.step < total:
            losses, run.grad_norm = run.train_step()  # on the device; nothing read back (but fp16)
            trained = 0.0
            if time_budget is not None:
                trained = self._trained_s(run)
                run.advance_schedule_to(min(SCHEDULE_TICKS, int(SCHEDULE_TICKS * trained / time_budget)))
            else:
                run.advance_schedule()
            run.objective_sum += losses.objective
            run.nll_sum += losses.nll
            bad = ~torch.isfinite(losses.objective)
            run.first_bad = torch.where(bad & (run.first_bad < 0), st.step + 1, run.first_bad)
            st.step += 1
            st.window_steps += 1
            if self._step_hook is not None:
                self._step_hook(st.step, run.model)

            at_eval = st.step % tc.eval_every == 0 or st.step == total
            at_pause = st.step == pause_at_step and (total is None or st.step < total)
            # The clock is read every step (no device sync), so a slow step cannot overshoot
            # max_time_s by more than itself.
            if time_budget is not None:  # the time budget counts training time, as the schedule does
                out_of_time = trained >= time_budget
            else:
                out_of_time = tc.max_time_s is not None and run.elapsed() >= tc.max_time_s
            if self._heartbeat_s is not None and not (at_eval or at_pause or out_of_time):
                now = self._clock()
                if now - run.beat_at >= self._heartbeat_s:
                    yield self._heartbeat(run, now)
            if not (at_eval or at_pause or out_of_time or st.step % CHECK_EVERY == 0):
                continue
            bad_step = int(run.first_bad.item())
            if bad_step >= 0:
                run.status, run.error = TrialStatus.DIVERGED, f"training loss became non-finite at step {bad_step}"
                log.warning(run.error)
                return
            if at_eval or out_of_time:
                stop = yield from self._evaluate_and_decide(run)
                if stop or out_of_time:
                    return
            if at_pause:
                yield from self._pause(run, evaluated=at_eval)
                return

    def _evaluate_and_decide(self, run: Run) -> Generator[TrainEvent, None, bool]:
        """A scheduled evaluation: record it, step a plateau schedule, save the best, count
        patience. Returns True when the run must stop (divergence, early stopping)."""
        st, es = run.st, self.config.train.early_stopping
        yield from self._evaluating(run)
        rec = self._record(run)
        yield TrainEvent(EventKind.EVAL, st.step, record=rec)
        metric = rec.val_loss if run.data.num_val_targets > 0 else rec.train_loss
        if not math.isfinite(metric):
            run.status, run.error = TrialStatus.DIVERGED, f"validation loss became non-finite at step {st.step}"
            return True
        if run.scheduler is not None and not run.per_step_schedule:
            run.scheduler.step(metric)
        if st.best_metric is None or metric < st.best_metric:  # any improvement is the new best
            st.best_metric, st.best_record = metric, rec
            st.train_time_s = run.elapsed()
            st.best_path = self._save(run, self.run_dir / BEST_CHECKPOINT)
            yield TrainEvent(EventKind.CHECKPOINT, st.step, checkpoint=str(st.best_path), record=rec)
        # min_delta governs patience only: an improvement smaller than it is still the best,
        # but it does not reset the count of evaluations without progress.
        if st.patience_ref is None or metric < st.patience_ref - (es.min_delta if es else 0.0):
            st.patience_ref, st.bad_evals = metric, 0
        else:
            st.bad_evals += 1
            if es is not None and st.bad_evals >= es.patience:
                run.status = TrialStatus.EARLY_STOPPED
                log.info("early stop at step %d: no improvement in %d evaluations", st.step, es.patience)
                return True
        run.window_start = time.monotonic()
        run.beat_at, run.beat_step = self._clock(), st.step  # the next heartbeat is heartbeat_s from now
        if self._by_time:
            run.stretch_start = self._clock()  # training time runs again
        run.model.train()
        return False

    def _pause(self, run: Run, evaluated: bool) -> Iterator[TrainEvent]:
        """Evaluate if needed (a measurement only: it decides nothing, so the resumed run is the
        uninterrupted one), write ``last.pt`` and end the run as paused."""
        st = run.st
        if not evaluated:
            yield from self._evaluating(run)
            rec = self._record(run, reset_window=False)  # the window goes on after the resume
            yield TrainEvent(EventKind.EVAL, st.step, record=rec)
            if not math.isfinite(rec.val_loss if run.data.num_val_targets > 0 else rec.train_loss):
                run.status, run.error = TrialStatus.DIVERGED, f"validation loss became non-finite at step {st.step}"
                return
        st.train_time_s = run.elapsed()
        path = self._save(run, self.run_dir / LAST_CHECKPOINT)
        run.status = TrialStatus.PAUSED
        log.info("paused at step %d; resume from %s", st.step, path)
        yield TrainEvent(EventKind.PAUSED, st.step, checkpoint=str(path), record=st.evals[-1] if st.evals else None)

    def _heartbeat(self, run: Run, now: float) -> TrainEvent:
        """A ``training`` heartbeat: the pace since the last one, and the window's mean train loss
        (the one device read-back, once per heartbeat)."""
        st, batch = run.st, self.config.train.batch_size
        seconds, steps = max(now - run.beat_at, 1e-9), st.step - run.beat_step
        run.beat_at, run.beat_step = now, st.step
        loss = float((run.nll_sum / max(1, st.window_steps)).item())
        info = {"phase": "training", "steps_per_s": steps / seconds, "samples_per_s": steps * batch / seconds,
                "train_loss": loss}
        if self._by_time:  # its schedule's progress: training seconds so far (evaluations not counted)
            info["trained_s"] = self._trained_s(run)
        return TrainEvent(EventKind.HEARTBEAT, st.step, info=info)

    def _trained_s(self, run: Run) -> float:
        """schedule_by: time: the training seconds so far (evaluations and checkpoints not counted)."""
        return run.st.trained_s + self._clock() - run.stretch_start

    def _phase(self, step: int, phase: str) -> Iterator[TrainEvent]:
        """A heartbeat naming a step that sends nothing until it ends (preparing data, compiling,
        evaluating), with heartbeats on."""
        if self._heartbeat_s is not None:
            yield TrainEvent(EventKind.HEARTBEAT, step, info={"phase": phase})

    def _evaluating(self, run: Run) -> Iterator[TrainEvent]:
        """An evaluation starts: training time stops counting until the loop runs again, and an
        ``evaluating`` heartbeat says so (with heartbeats on)."""
        if self._by_time:
            run.st.trained_s += self._clock() - run.stretch_start
            run.stretch_start = self._clock()
        yield from self._phase(run.st.step, "evaluating")

    def _record(self, run: Run, reset_window: bool = True) -> EvalRecord:
        """Evaluate now and append the record; the train-loss window restarts unless told not to."""
        st, B, T = run.st, self.config.train.batch_size, self.config.data.seq_len
        train_time = time.monotonic() - run.window_start
        assert run.train_step.optimizer is not None
        started = time.monotonic()
        val = evaluate(run.model, run.data, run.train_step.autocast, eval_batch_size(B, T, run.data.vocab_size),
                       self.config.data.val_mode)
        st.eval_time_s += time.monotonic() - started
        n = max(1, st.window_steps)
        rec = EvalRecord(
            step=st.step,
            epoch=st.step / run.data.steps_per_epoch(B),
            train_loss=float((run.nll_sum / n).item()),
            train_objective=float((run.objective_sum / n).item()),
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
            run.nll_sum.zero_()
            run.objective_sum.zero_()
            st.window_steps = 0
        return rec

    def _result(self, run: Run) -> TrainResult:
        st, best = run.st, run.st.best_record
        return TrainResult(
            status=run.status,
            steps=st.step,
            params=run.model.num_parameters(),
            device=run.device.type,
            precision=run.precision,
            train_time_s=run.elapsed(),
            eval_time_s=st.eval_time_s,
            best_val_loss=best.val_loss if best else None,
            best_val_bpc=best.val_bpc if best else None,
            best_val_accuracy=best.val_accuracy if best else None,
            best_step=best.step if best else None,
            # None when the best weights are not in this folder (resumed from a later last.pt).
            best_checkpoint=str(st.best_path) if best and st.best_path else None,
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

    def _save(self, run: Run, path: Path) -> Path:
        return save_checkpoint(path, checkpoint_state(run, self.config))


def model_config_from_checkpoint(ckpt: dict[str, Any]) -> ModelConfig:
    """The model config stored in a checkpoint."""
    return ModelConfig(**ckpt["config"]["model"])
