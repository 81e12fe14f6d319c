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
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from rnn.checkpoint import load_checkpoint, save_checkpoint
from rnn.config import ModelConfig, RunConfig
from rnn.data import LMData, prepare_data
from rnn.device import detect_device, device_report, resolve_precision
from rnn.errors import CheckpointError
from rnn.events import EvalRecord, TrainEvent, TrainResult, TrialStatus
from rnn.models import LanguageModel, build_model
from rnn.optim import build_scheduler
from rnn.step import TrainStep, lm_loss  # noqa: F401  (lm_loss: part of this module's API)

log = logging.getLogger(__name__)

BEST_CHECKPOINT = "best.pt"
#: Read the device-side divergence flag and the wall clock at most this many steps apart.
CHECK_EVERY = 50
#: Validation needs no backward pass, so it runs in batches of up to this many logits
#: (256 MB in fp32), never fewer rows than the training batch: small training batches would
#: otherwise make evaluation a long loop of tiny kernels.
EVAL_LOGITS_BUDGET = 2**26
EVAL_MAX_BATCH = 1024


def eval_batch_size(train_batch: int, seq_len: int, vocab_size: int) -> int:
    """Rows per validation batch: as many as the logits budget allows, within [train_batch, 1024]."""
    return max(train_batch, min(EVAL_MAX_BATCH, EVAL_LOGITS_BUDGET // max(1, seq_len * vocab_size)))


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

    def iter_fit(self, resume_from: Union[str, Path, bytes, None] = None) -> Iterator[TrainEvent]:
        """Train, yielding events; the last event has kind ``end``.

        ``resume_from`` (a checkpoint path or its bytes) continues that run exactly: same
        steps, same batches, same schedule. Exceptions (out of memory, a bad corpus) propagate.
        """
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
        es = tc.early_stopping
        train_step = TrainStep(model, data, tc, precision, tc.batch_size)
        optimizer, scaler, generator = train_step.optimizer, train_step.scaler, train_step.generator
        assert optimizer is not None  # released only after the loop
        plateau_patience = max(1, es.patience // 2) if es else 2
        scheduler = build_scheduler(optimizer, tc, total_steps, plateau_patience)
        per_step_schedule = scheduler is not None and tc.scheduler != "plateau"

        st = _RunState()
        if resume_from is not None:
            ckpt = load_checkpoint(resume_from, map_location=device)
            self._restore(ckpt, model, optimizer, scheduler, scaler, generator, st)
            log.info("resumed from step %d (best val loss %.4f)", st.step, st.best_metric)

        report = device_report(device)
        params = model.num_parameters()
        yield TrainEvent(
            "start",
            st.step,
            info={
                "params": params,
                "device": device.type,
                "device_name": report.get("device_name"),
                "precision": precision,
                "recurrence": model.recurrence_path(device, precision),
                "vocab_size": data.vocab_size,
                "corpus": data.corpus.name,
                "corpus_sha256": data.corpus.sha256,
                "total_steps": total_steps,
                "resumed_from_step": st.step if resume_from is not None else None,
            },
        )

        autocast = train_step.autocast
        B, T = tc.batch_size, cfg.data.seq_len
        steps_per_epoch = data.steps_per_epoch(B)
        # Device-side accumulators: read back only at check points.
        loss_sum = torch.zeros((), device=device)
        grad_norm = torch.zeros((), device=device)
        first_bad = torch.full((), -1, dtype=torch.long, device=device)
        status = TrialStatus.COMPLETED
        error: Optional[str] = None
        run_start = time.monotonic() - st.train_time_s
        window_start, window_steps = time.monotonic(), 0

        model.train()
        while total_steps is None or st.step < total_steps:
            loss, grad_norm = train_step()  # on the device; nothing read back here
            if per_step_schedule:
                scheduler.step()
            loss_sum += loss
            bad = ~torch.isfinite(loss)
            first_bad = torch.where(bad & (first_bad < 0), st.step + 1, first_bad)
            st.step += 1
            window_steps += 1
            if self._step_hook is not None:
                self._step_hook(st.step, model)

            at_eval = st.step % tc.eval_every == 0 or st.step == total_steps
            if not (at_eval or st.step % CHECK_EVERY == 0):
                continue
            bad_step = int(first_bad.item())
            if bad_step >= 0:
                status = TrialStatus.DIVERGED
                error = f"training loss became non-finite at step {bad_step}"
                log.warning(error)
                break
            out_of_time = tc.max_time_s is not None and time.monotonic() - run_start >= tc.max_time_s
            if not (at_eval or out_of_time):
                continue

            train_time = time.monotonic() - window_start
            rec = self._evaluate(model, data, autocast, st, loss_sum / window_steps, grad_norm, optimizer)
            rec = replace(
                rec,
                epoch=st.step / steps_per_epoch,
                samples_per_s=window_steps * B / max(train_time, 1e-9),
                tokens_per_s=window_steps * B * T / max(train_time, 1e-9),
                elapsed_s=time.monotonic() - run_start,
            )
            st.evals.append(rec)
            yield TrainEvent("eval", st.step, record=rec)
            if not math.isfinite(rec.val_loss if data.num_val_targets > 0 else rec.train_loss):
                status, error = TrialStatus.DIVERGED, f"validation loss became non-finite at step {st.step}"
                break
            metric = rec.val_loss if data.num_val_targets > 0 else rec.train_loss
            if scheduler is not None and not per_step_schedule:
                scheduler.step(metric)
            if st.best_metric is None or metric < st.best_metric - (es.min_delta if es else 0.0):
                st.best_metric, st.best_record, st.bad_evals = metric, rec, 0
                st.train_time_s = time.monotonic() - run_start
                path = self._save(model, optimizer, scheduler, scaler, generator, st, data)
                yield TrainEvent("checkpoint", st.step, checkpoint=str(path), record=rec)
            else:
                st.bad_evals += 1
                if es is not None and st.bad_evals >= es.patience:
                    status = TrialStatus.EARLY_STOPPED
                    log.info("early stop at step %d: no improvement in %d evaluations", st.step, es.patience)
                    break
            if out_of_time:
                break
            loss_sum.zero_()
            window_start, window_steps = time.monotonic(), 0
            model.train()

        best = st.best_record
        result = TrainResult(
            status=status,
            steps=st.step,
            params=params,
            device=device.type,
            precision=precision,
            train_time_s=time.monotonic() - run_start,
            best_val_loss=best.val_loss if best else None,
            best_val_bpc=best.val_bpc if best else None,
            best_val_accuracy=best.val_accuracy if best else None,
            best_step=best.step if best else None,
            best_checkpoint=str(self.run_dir / BEST_CHECKPOINT) if best else None,
            corpus_sha256=data.corpus.sha256,
            vocab_size=data.vocab_size,
            error=error,
            evals=tuple(st.evals),
        )
        yield TrainEvent("end", st.step, result=result)

    # ------------------------------------------------------------------ internals
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

    @torch.no_grad()
    def _evaluate(
        self,
        model: LanguageModel,
        data: LMData,
        autocast: Any,
        st: _RunState,
        train_loss: torch.Tensor,
        grad_norm: torch.Tensor,
        optimizer: torch.optim.Optimizer,
    ) -> EvalRecord:
        """Forward-direction loss, accuracy and bits/char over the whole validation split."""
        model.eval()
        nll = torch.zeros((), dtype=torch.float64, device=train_loss.device)
        correct = torch.zeros((), dtype=torch.long, device=train_loss.device)
        count = 0
        rows = eval_batch_size(self.config.train.batch_size, data.seq_len, data.vocab_size)
        for window in data.val_batches(rows):  # (b, T+1)
            with autocast:
                logits = model(window).logits  # (b, T, V); forward direction only
            targets = window[:, 1:]
            nll += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum").double()
            correct += (logits.argmax(-1) == targets).sum()
            count += targets.numel()
        if count:
            val_loss = float(nll.item()) / count
            val_acc = float(correct.item()) / count
            val_bpc = val_loss * data.tokens_per_char_val / math.log(2)
        else:
            val_loss = val_acc = val_bpc = float("nan")
        return EvalRecord(
            step=st.step,
            epoch=0.0,
            train_loss=float(train_loss.item()),
            val_loss=val_loss,
            val_bpc=val_bpc,
            val_perplexity=math.exp(min(val_loss, 700.0)) if math.isfinite(val_loss) else float("nan"),
            val_accuracy=val_acc,
            lr=optimizer.param_groups[0]["lr"],
            grad_norm=float(grad_norm.float().item()),
            samples_per_s=0.0,
            tokens_per_s=0.0,
            elapsed_s=0.0,
        )

    def _save(self, model, optimizer, scheduler, scaler, generator, st: _RunState, data: LMData) -> Path:
        state = {
            "config": self.config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(),
            "step": st.step,
            "best_metric": st.best_metric,
            "bad_evals": st.bad_evals,
            "train_time_s": st.train_time_s,
            "evals": [asdict(r) for r in st.evals],
            "rng": {"torch": torch.get_rng_state(), "generator": generator.get_state()},
            "tokenizer": data.tokenizer.to_state(),
            "vocab_size": data.vocab_size,
            "corpus_sha256": data.corpus.sha256,
        }
        if torch.cuda.is_available() and generator.device.type == "cuda":
            state["rng"]["cuda"] = torch.cuda.get_rng_state(generator.device)
        return save_checkpoint(self.run_dir / BEST_CHECKPOINT, state)

    def _restore(self, ckpt, model, optimizer, scheduler, scaler, generator, st: _RunState) -> None:
        saved = RunConfig.from_dict(ckpt["config"])
        if saved.model != self.config.model or saved.data != self.config.data:
            raise CheckpointError(
                "checkpoint was written for a different model or data config; "
                f"checkpoint model={saved.model}, this run model={self.config.model}"
            )
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        generator.set_state(ckpt["rng"]["generator"].cpu())
        if "cuda" in ckpt["rng"] and generator.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"].cpu(), generator.device)
        st.step = int(ckpt["step"])
        st.best_metric = ckpt["best_metric"]
        st.bad_evals = int(ckpt["bad_evals"])
        st.train_time_s = float(ckpt["train_time_s"])
        st.evals = [EvalRecord(**r) for r in ckpt["evals"]]
        st.best_record = next((r for r in reversed(st.evals) if r.step == st.step), None)


class _RunState:
    """What changes as a run progresses and what a checkpoint restores."""

    def __init__(self) -> None:
        self.step = 0
        self.best_metric: Optional[float] = None
        self.best_record: Optional[EvalRecord] = None
        self.bad_evals = 0
        self.train_time_s = 0.0
        self.evals: list[EvalRecord] = []


def model_config_from_checkpoint(ckpt: dict[str, Any]) -> ModelConfig:
    """The model config stored in a checkpoint."""
    return ModelConfig(**ckpt["config"]["model"])
