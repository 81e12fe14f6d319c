"""Issue 11: the figures a run reports mean what they say, and resume refuses what it cannot honour."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_run
from rnn.config import EarlyStopping, RunConfig
from rnn.data import prepare_data
from rnn.errors import CheckpointError
from rnn.evaluate import evaluate
from rnn.events import TrialStatus
from rnn.models import build_model
from rnn.optim import build_scheduler
from rnn.run_state import Run
from rnn.step import TrainStep, lm_losses
from rnn.train import Trainer


def tiny(**train: object) -> RunConfig:
    """The engine tests' tiny run (conftest.TINY_RUN) at a 20-step budget unless told otherwise."""
    return tiny_run(**{"max_steps": 20, **train})


TINY = tiny()


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "step"])
def test_resume_with_another_budget_is_refused_where_the_schedule_depends_on_it(tmp_path: Path, scheduler: str) -> None:
    Trainer(tiny(scheduler=scheduler), tmp_path / "a").fit()
    with pytest.raises(CheckpointError, match=f"20-step {scheduler} schedule but this run's budget is 40 steps"):
        Trainer(tiny(scheduler=scheduler, max_steps=40), tmp_path / "b").fit(resume_from=tmp_path / "a" / "best.pt")


def test_resume_with_another_budget_extends_a_constant_schedule(tmp_path: Path) -> None:
    Trainer(tiny(), tmp_path / "a").fit()
    longer = Trainer(tiny(max_steps=40), tmp_path / "b").fit(resume_from=tmp_path / "a" / "best.pt")
    assert longer.status is TrialStatus.COMPLETED and longer.steps == 40


def test_train_loss_is_val_loss_quantity_and_the_objective_has_its_own_name(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = replace(TINY, model=replace(TINY.model, bidirectional=True))
    data = prepare_data(cfg.data)
    model = build_model(cfg.model, data.vocab_size)
    window = data.sample_batch(4, torch.Generator().manual_seed(0))
    losses = lm_losses(model, window, label_smoothing=0.2)
    out = model(window)
    forward_nll = F.cross_entropy(out.logits.flatten(0, 1), window[:, 1:].flatten())
    objective = 0.5 * (
        F.cross_entropy(out.logits.flatten(0, 1), window[:, 1:].flatten(), label_smoothing=0.2)
        + F.cross_entropy(out.backward_logits.flatten(0, 1), window[:, :-1].flatten(), label_smoothing=0.2)
    )
    assert float(losses.nll) == pytest.approx(float(forward_nll.detach()), rel=1e-6)
    assert float(losses.objective.detach()) == pytest.approx(float(objective.detach()), rel=1e-6)

    smoothed = Trainer(replace(cfg, train=replace(cfg.train, label_smoothing=0.2)), tmp_path / "s").fit()
    rec = smoothed.evals[-1]
    assert rec.train_objective > rec.train_loss  # smoothing adds to the objective, not to train_loss
    plain = Trainer(tiny(), tmp_path / "p").fit().evals[-1]
    assert plain.train_objective == pytest.approx(plain.train_loss, rel=1e-6)


def test_bidirectional_evaluation_skips_the_backward_stack() -> None:
    cfg = replace(TINY, model=replace(TINY.model, bidirectional=True))
    data = prepare_data(cfg.data)
    model = build_model(cfg.model, data.vocab_size)
    calls: list[int] = []
    model.backward_rnn.register_forward_hook(lambda *_: calls.append(1))
    val = evaluate(model, data, torch.autocast("cpu", enabled=False), rows=64)
    assert calls == [] and math.isfinite(val.loss)


def test_best_val_loss_is_the_minimum_and_min_delta_governs_patience_only(tmp_path: Path) -> None:
    # min_delta larger than any possible gain: patience runs out after 3 evaluations, but every
    # real improvement is still the best and is saved.
    cfg = tiny(max_steps=200, eval_every=5, early_stopping=EarlyStopping(patience=3, min_delta=10.0))
    events = list(Trainer(cfg, tmp_path).iter_fit())
    result = events[-1].result
    assert result.status is TrialStatus.EARLY_STOPPED and result.steps == 20
    losses = [r.val_loss for r in result.evals]
    assert result.best_val_loss == min(losses) < losses[0]
    assert result.best_step == result.evals[losses.index(min(losses))].step
    saved = [e.step for e in events if e.kind == "checkpoint"]
    assert saved == [r.step for i, r in enumerate(result.evals) if r.val_loss < min([math.inf, *losses[:i]])]


def test_max_time_is_checked_every_step(tmp_path: Path) -> None:
    def slow(step: int, model: torch.nn.Module) -> None:
        time.sleep(0.05)

    result = Trainer(tiny(max_steps=None, max_time_s=0.2, eval_every=10_000), tmp_path, step_hook=slow).fit()
    # 0.2 s of 0.05 s steps is 4 steps (contention only makes steps slower); it used to run to
    # the next 50-step check.
    assert result.status is TrialStatus.COMPLETED and 1 <= result.steps <= 4


def test_best_checkpoint_after_a_resume_into_a_new_folder_exists(tmp_path: Path) -> None:
    Trainer(tiny(), tmp_path / "a").fit()
    resumed = Trainer(tiny(), tmp_path / "b").fit(resume_from=(tmp_path / "a" / "best.pt").read_bytes())
    assert resumed.best_checkpoint == str(tmp_path / "b" / "best.pt") and Path(resumed.best_checkpoint).is_file()


def test_fp16_step_skipped_by_the_scaler_does_not_advance_the_schedule() -> None:
    # CPU fp16 autocast has no fused LSTM kernel; the layer-norm LSTM runs on plain ops.
    cfg = replace(TINY, model=replace(TINY.model, layer_norm=True), train=replace(TINY.train, scheduler="onecycle"))
    data = prepare_data(cfg.data)
    model = build_model(cfg.model, data.vocab_size)
    ts = TrainStep(model, data, cfg.train, "fp16", 8)
    assert ts.optimizer is not None
    run = Run(torch.device("cpu"), data, model, "fp16", 20, ts, build_scheduler(ts.optimizer, cfg.train, 20, 2))
    before = [p.detach().clone() for p in model.parameters()]

    ts.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # the scaled loss overflows fp16
    ts()
    run.advance_schedule()
    assert ts.skipped and run.scheduler.last_epoch == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    ts.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    ts()
    run.advance_schedule()
    assert not ts.skipped and run.scheduler.last_epoch == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_rng_capture_restores_the_cpu_and_data_generators() -> None:
    # CUDA and MPS default generators are captured the same way on those devices; no GPU here.
    from rnn.run_state import capture_rng, restore_rng

    gen = torch.Generator().manual_seed(5)
    saved = capture_rng(gen)
    assert set(saved) == {"torch", "generator"}
    expected = (torch.rand(3), torch.rand(3, generator=gen))
    restore_rng(saved, gen)
    again = (torch.rand(3), torch.rand(3, generator=gen))
    assert all(torch.equal(a, b) for a, b in zip(expected, again, strict=True))
