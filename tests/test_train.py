"""The trainer: budgets, schedules, early stopping, divergence, checkpoints and exact resume."""

from __future__ import annotations

import itertools
import math
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN, tiny_run
from rnn.checkpoint import load_checkpoint, save_checkpoint
from rnn.config import DEFAULT_MIN_LR_FRACTION, DataConfig, EarlyStopping, ModelConfig, RunConfig, TrainConfig
from rnn.data import prepare_data
from rnn.errors import CheckpointError, is_out_of_memory
from rnn.events import EventKind, TrainEvent, TrialStatus
from rnn.sample import generate
from rnn.train import Trainer

TINY = TINY_RUN
tiny = tiny_run


def test_event_kind_is_a_closed_set() -> None:
    assert TrainEvent("eval", 3).kind is EventKind.EVAL and EventKind.END == "end"  # str-valued
    with pytest.raises(ValueError, match="expected one of start, eval, checkpoint, paused, heartbeat, end"):
        TrainEvent("stopped", 3)


def test_fit_reports_evals_and_saves_best(tmp_path: Path) -> None:
    events = list(Trainer(TINY, tmp_path).iter_fit())
    kinds = [e.kind for e in events]
    assert all(isinstance(k, EventKind) for k in kinds)
    assert kinds[0] is EventKind.START and kinds[-1] is EventKind.END
    assert kinds.count("eval") == 4
    result = events[-1].result
    assert result.status is TrialStatus.COMPLETED and result.steps == 40
    assert [r.step for r in result.evals] == [10, 20, 30, 40]
    # Checkpoints are written only when validation improves.
    improvements = sum(
        1 for i, r in enumerate(result.evals) if r.val_loss < min([math.inf] + [p.val_loss for p in result.evals[:i]])
    )
    assert kinds.count("checkpoint") == improvements
    assert result.best_val_loss == min(r.val_loss for r in result.evals)
    assert Path(result.best_checkpoint).is_file()
    rec = result.evals[-1]
    assert rec.val_bpc == pytest.approx(rec.val_loss / math.log(2), rel=0.05)  # char level: ~1 token per char
    assert rec.val_perplexity == pytest.approx(math.exp(rec.val_loss))
    assert 0 <= rec.val_accuracy <= 1 and rec.samples_per_s > 0 and rec.tokens_per_s == pytest.approx(
        rec.samples_per_s * 16
    )
    assert events[0].info["params"] == result.params > 0
    assert len(events[0].info["corpus_sha256"]) == 64


@pytest.mark.slow
def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    cfg = tiny(max_steps=60, eval_every=20, scheduler="onecycle")
    cfg = replace(cfg, model=replace(cfg.model, dropout=0.1, num_layers=2))  # dropout exercises the RNG state
    full = Trainer(cfg, tmp_path / "full").fit()

    # Interrupt after the first checkpoint, as a killed worker would.
    part_dir = tmp_path / "part"
    for event in Trainer(cfg, part_dir).iter_fit():
        if event.kind == "checkpoint":
            break
    ckpt_step = load_checkpoint(part_dir / "best.pt")["step"]
    assert ckpt_step == 20
    resumed = Trainer(cfg, tmp_path / "resumed").fit(resume_from=part_dir / "best.pt")
    assert [r.step for r in resumed.evals] == [20, 40, 60]
    for a, b in zip(full.evals, resumed.evals, strict=True):
        assert a.step == b.step
        assert b.val_loss == pytest.approx(a.val_loss, rel=1e-6, abs=1e-7)
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-6, abs=1e-7)
        assert b.lr == pytest.approx(a.lr)
    assert resumed.best_val_loss == pytest.approx(full.best_val_loss, rel=1e-6)
    # the time spent evaluating is counted, across the resume too (the first evaluation's comes from the checkpoint)
    assert full.eval_time_s is not None and 0 < full.eval_time_s < full.train_time_s
    before = load_checkpoint(part_dir / "best.pt")["eval_time_s"]
    assert resumed.eval_time_s is not None and resumed.eval_time_s > before > 0


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path: Path) -> None:
    Trainer(tiny(max_steps=10), tmp_path / "a").fit()
    other = replace(TINY, model=replace(TINY.model, hidden_size=48))
    with pytest.raises(CheckpointError, match="different model"):
        Trainer(other, tmp_path / "b").fit(resume_from=tmp_path / "a" / "best.pt")


def test_nan_loss_stops_as_diverged_and_names_the_step(tmp_path: Path) -> None:
    def poison(step: int, model: torch.nn.Module) -> None:
        if step == 7:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))

    result = Trainer(tiny(max_steps=100, eval_every=50), tmp_path, step_hook=poison).fit()
    assert result.status is TrialStatus.DIVERGED
    assert "step 8" in result.error  # the first step computed with NaN weights
    assert result.steps < 100


def test_early_stopping_after_patience(tmp_path: Path) -> None:
    # A learning rate of ~0 cannot improve validation by min_delta.
    cfg = tiny(lr=1e-9, max_steps=200, eval_every=5, early_stopping=EarlyStopping(patience=2, min_delta=0.01))
    result = Trainer(cfg, tmp_path).fit()
    assert result.status is TrialStatus.EARLY_STOPPED
    assert result.steps == 15  # best at step 5, then two evaluations without improvement
    assert result.best_step == 5


def test_max_epochs_and_time_budgets(tmp_path: Path) -> None:
    cfg = tiny(max_steps=None, max_epochs=0.001, eval_every=1000)
    result = Trainer(cfg, tmp_path / "e").fit()
    steps_per_epoch = prepare_data(cfg.data).steps_per_epoch(8)
    assert result.steps == math.ceil(0.001 * steps_per_epoch)
    timed = Trainer(tiny(max_steps=None, max_time_s=0.5, scheduler="constant", eval_every=10_000), tmp_path / "t").fit()
    assert timed.status is TrialStatus.COMPLETED and 0 < timed.steps < 10_000


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "plateau", "step", "constant"])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_schedules_and_optimizers_run(tmp_path: Path, scheduler: str, optimizer: str) -> None:
    cfg = tiny(max_steps=12, eval_every=4, scheduler=scheduler, optimizer=optimizer, label_smoothing=0.1)
    result = Trainer(cfg, tmp_path).fit()
    assert result.status is TrialStatus.COMPLETED and len(result.evals) == 3
    lrs = [r.lr for r in result.evals]
    if scheduler == "constant":
        assert lrs == [cfg.train.lr] * 3
    if scheduler == "onecycle":
        assert lrs[-1] < max(lrs)


def test_scheduler_without_step_budget_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a step budget"):
        Trainer(tiny(max_steps=None, max_time_s=1.0, scheduler="cosine"), tmp_path).fit()


@pytest.mark.parametrize("cell,bidirectional,level",
                         [("gru", True, "char"), ("rnn", False, "bpe"), ("lstm", True, "word")])
def test_cells_levels_and_bidirectional_train(tmp_path: Path, cell: str, bidirectional: bool, level: str) -> None:
    cfg = replace(
        TINY,
        data=replace(TINY.data, level=level, vocab_size=300 if level != "char" else None),
        model=replace(TINY.model, cell=cell, bidirectional=bidirectional),
        train=replace(TINY.train, max_steps=10, eval_every=5),
    )
    result = Trainer(cfg, tmp_path, cache_dir=tmp_path / "cache").fit()
    assert result.status is TrialStatus.COMPLETED
    assert all(math.isfinite(r.val_bpc) for r in result.evals)
    if level != "char":
        assert result.vocab_size <= 300


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the hand-made evil pickle below
def test_checkpoint_is_safe_to_load(tmp_path: Path) -> None:
    result = Trainer(tiny(max_steps=10), tmp_path).fit()
    path = Path(result.best_checkpoint)
    state = load_checkpoint(path)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "tokenizer", "config", "step"} <= set(state)
    # Truncated file.
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_checkpoint(bad)

    # A pickle that would run code is refused, and the code does not run.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):  # noqa: D401
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()
    evil.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):  # the pickling error itself
        save_checkpoint(path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_generate_from_checkpoint(tmp_path: Path) -> None:
    result = Trainer(tiny(max_steps=20), tmp_path).fit()
    text = generate(result.best_checkpoint, prompt="The ", length=30, temperature=0.8, top_k=5, seed=1)
    assert text.startswith("The ") and len(text) == 34
    assert text == generate(result.best_checkpoint, prompt="The ", length=30, temperature=0.8, top_k=5, seed=1)
    greedy = generate(result.best_checkpoint, prompt="The ", length=10, temperature=0)
    assert greedy == generate(result.best_checkpoint, prompt="The ", length=10, temperature=0, seed=99)


def test_out_of_memory_classification() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"))
    assert not is_out_of_memory(ValueError("out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.slow
def test_learns_shakespeare_well_below_unigram_entropy(tmp_path: Path, shakespeare_path: Path) -> None:
    """A real learning check: 300 AdamW steps of a 1-layer LN-LSTM on Tiny Shakespeare."""
    cfg = RunConfig(
        data=DataConfig(corpus=str(shakespeare_path), level="char", seq_len=64),
        model=ModelConfig(cell="lstm", embedding_dim=64, hidden_size=128, num_layers=1, dropout=0.0, layer_norm=True),
        train=TrainConfig(batch_size=32, max_steps=300, eval_every=300, lr=3e-3, scheduler="onecycle", seed=0),
    )
    result = Trainer(cfg, tmp_path).fit()
    text = shakespeare_path.read_text(encoding="utf-8")
    counts = torch.tensor([text.count(c) for c in set(text)], dtype=torch.float64)
    p = counts / counts.sum()
    unigram_nats = float(-(p * p.log()).sum())  # about 3.3 nats/char
    assert result.best_val_loss < unigram_nats - 1.0, (result.best_val_loss, unigram_nats)


def _final_weights(cfg: RunConfig, run_dir: Path, **fit: object) -> tuple[object, dict[str, torch.Tensor]]:
    """Run to the end; returns the result and a copy of the weights after the last step."""
    last: dict[str, torch.Tensor] = {}
    total = cfg.train.max_steps

    def keep(step: int, model: torch.nn.Module) -> None:
        if step == total:
            last.update({k: v.detach().clone() for k, v in model.state_dict().items()})

    result = Trainer(cfg, run_dir, step_hook=keep).fit(**fit)
    return result, last


@pytest.mark.parametrize("pause_at", [20, 30])  # at an evaluation, and between two
def test_pause_and_resume_reproduce_the_uninterrupted_run(tmp_path: Path, pause_at: int) -> None:
    # Dropout and a step-wise onecycle schedule exercise the RNG and schedule state; patience and
    # min_delta make the pause evaluation's neutrality visible.
    cfg = tiny(max_steps=60, eval_every=20, scheduler="onecycle",
               early_stopping=EarlyStopping(patience=3, min_delta=1e-3))
    cfg = replace(cfg, model=replace(cfg.model, dropout=0.1, num_layers=2))
    full, full_weights = _final_weights(cfg, tmp_path / "full")

    events = list(Trainer(cfg, tmp_path / "part").iter_fit(pause_at_step=pause_at))
    assert [e.kind for e in events][-2:] == ["paused", "end"]
    paused = events[-1].result
    assert paused.status is TrialStatus.PAUSED and not paused.status.is_success()
    assert not paused.status.is_terminal() and TrialStatus.COMPLETED.is_terminal()
    assert paused.steps == pause_at and paused.evals[-1].step == pause_at  # evaluated at the pause
    last = tmp_path / "part" / "last.pt"
    assert events[-2].checkpoint == str(last) and load_checkpoint(last)["step"] == pause_at
    # The best checkpoint stays save-on-improvement: written at step 20 only.
    assert load_checkpoint(tmp_path / "part" / "best.pt")["step"] == 20

    resumed, resumed_weights = _final_weights(cfg, tmp_path / "resumed", resume_from=last)
    assert resumed.status is TrialStatus.COMPLETED and resumed.steps == 60
    scheduled = [r for r in resumed.evals if r.step % 20 == 0]
    assert [r.step for r in scheduled] == [r.step for r in full.evals] == [20, 40, 60]
    for a, b in zip(full.evals, scheduled, strict=True):
        assert (b.val_loss, b.train_loss, b.lr) == (a.val_loss, a.train_loss, a.lr)
    assert resumed_weights.keys() == full_weights.keys()
    assert all(torch.equal(resumed_weights[k], full_weights[k]) for k in full_weights)
    assert (resumed.best_val_loss, resumed.best_step) == (full.best_val_loss, full.best_step)


def test_pause_at_or_past_the_budget_is_ignored_and_before_the_resume_is_refused(tmp_path: Path) -> None:
    result = Trainer(tiny(max_steps=20), tmp_path / "a").fit()
    events = list(Trainer(tiny(max_steps=20), tmp_path / "b").iter_fit(pause_at_step=20))
    assert "paused" not in [e.kind for e in events]
    assert events[-1].result.status is TrialStatus.COMPLETED and events[-1].result.steps == result.steps == 20
    with pytest.raises(ValueError, match="pause_at_step=10"):
        list(Trainer(tiny(max_steps=40), tmp_path / "c").iter_fit(tmp_path / "a" / "best.pt", pause_at_step=10))


class _FakeClock:
    """One second per reading: the heartbeat's timing without waiting for it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_heartbeats_come_between_evaluations_and_change_nothing(tmp_path: Path) -> None:
    cfg = tiny()  # 40 steps, an evaluation every 10
    beating = list(Trainer(cfg, tmp_path / "beat", heartbeat_s=3.0, clock=_FakeClock()).iter_fit())
    plain = list(Trainer(cfg, tmp_path / "plain").iter_fit())
    assert not any(e.kind is EventKind.HEARTBEAT for e in plain)
    # the same run: heartbeats read the clock and the loss, and decide nothing
    evals = [[e.record.val_loss for e in events if e.kind is EventKind.EVAL] for events in (beating, plain)]
    assert evals[0] == evals[1] and len(evals[0]) == 4

    training = [e for e in beating if e.kind is EventKind.HEARTBEAT and e.info["phase"] == "training"]
    steps = [e.step for e in training]
    # one reading per step, a beat every 3 readings: steps 3, 6, 9 (not 10: that step evaluates), 13, ...
    assert steps[:3] == [3, 6, 9] and 10 not in steps and all(s % 10 for s in steps)
    assert all(b - a >= 3 for a, b in itertools.pairwise(steps))  # never more often than heartbeat_s
    for e in training:
        assert e.info["steps_per_s"] > 0 and e.info["samples_per_s"] == pytest.approx(e.info["steps_per_s"] * 8)
        assert math.isfinite(e.info["train_loss"]) and e.info["train_loss"] > 0
    for i, e in enumerate(beating):  # every evaluation is announced just before it starts
        if e.kind is EventKind.EVAL:
            before = beating[i - 1]
            assert before.kind is EventKind.HEARTBEAT and before.info == {"phase": "evaluating"}
            assert before.step == e.step


def test_set_up_names_its_slow_steps_before_they_start(tmp_path: Path) -> None:
    events = list(Trainer(tiny(), tmp_path, heartbeat_s=3.0, clock=_FakeClock()).iter_fit())
    phases = [e.info["phase"] for e in events[:3] if e.kind is EventKind.HEARTBEAT]
    assert phases == ["preparing data", "compiling"] and events[2].kind is EventKind.START
    off = replace(tiny(), train=replace(tiny().train, compile="off"))
    events = list(Trainer(off, tmp_path / "off", heartbeat_s=3.0, clock=_FakeClock()).iter_fit())
    assert [e.info["phase"] for e in events[:1]] == ["preparing data"] and events[1].kind is EventKind.START


def test_a_negative_heartbeat_period_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heartbeat_s must be >= 0"):
        Trainer(tiny(), tmp_path, heartbeat_s=-1.0)


def _time_run(max_time_s: float, scheduler: str = "cosine") -> RunConfig:
    cfg = tiny(max_steps=None, max_time_s=max_time_s, scheduler=scheduler, lr=0.01, warmup_fraction=0.1)
    return replace(cfg, train=replace(cfg.train, schedule_by="time"))


def test_a_time_schedule_ends_with_the_time_budget(tmp_path: Path) -> None:
    """One clock second per reading: the schedule's progress is training time over max_time_s,
    whatever the steps cost, and the run ends when the budget is spent, at the cosine's floor."""
    cfg = _time_run(60.0)
    cfg = replace(cfg, train=replace(cfg.train, min_lr_fraction=0.35))
    result = Trainer(cfg, tmp_path, clock=_FakeClock()).fit()
    lrs = [r.lr for r in result.evals]
    assert result.status is TrialStatus.COMPLETED
    assert 50 <= result.steps <= 60  # about a step per second, evaluations not counted
    assert lrs[-1] == pytest.approx(0.01 * 0.35, rel=1e-3)  # annealed to its end, at the budget
    assert lrs == sorted(lrs, reverse=True)  # past the warm-up, only down


def test_a_resumed_time_schedule_continues_from_its_training_time(tmp_path: Path) -> None:
    cfg = _time_run(60.0)
    whole = Trainer(cfg, tmp_path / "whole", clock=_FakeClock()).fit()
    first = list(Trainer(cfg, tmp_path / "a", clock=_FakeClock()).iter_fit(pause_at_step=20))
    assert first[-1].result.status is TrialStatus.PAUSED
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    assert 15 <= ckpt["trained_s"] <= 25  # the training seconds so far travel with the checkpoint
    rest = Trainer(cfg, tmp_path / "b", clock=_FakeClock()).fit(resume_from=tmp_path / "a" / "last.pt")
    assert rest.status is TrialStatus.COMPLETED
    assert rest.evals[-1].lr == pytest.approx(0.01 * DEFAULT_MIN_LR_FRACTION, rel=1e-3)  # ends at the budget
    assert abs(rest.steps - whole.steps) <= 3  # not bit-exact: time is not deterministic, here nearly


def test_a_time_schedule_needs_a_time_budget(tmp_path: Path) -> None:
    cfg = _time_run(60.0)
    with pytest.raises(ValueError, match="schedule_by: time needs train.max_time_s"):
        Trainer(replace(cfg, train=replace(cfg.train, max_time_s=None, max_steps=10)), tmp_path).fit()


def test_the_start_event_and_the_trial_row_say_how_much_of_the_held_out_split_is_evaluated(tmp_path: Path) -> None:
    from conftest import trial_of
    from orchestrator.results.tables import trial_row

    whole = next(iter(Trainer(tiny_run(max_steps=2, eval_every=2), tmp_path / "whole").iter_fit()))
    assert whole.kind == "start" and whole.info["val_coverage"] == 1.0  # the builtin split is under the default cap
    cfg = tiny_run(max_steps=2, eval_every=2)
    cfg = replace(cfg, data=replace(cfg.data, val_max_chars=200))
    head = next(iter(Trainer(cfg, tmp_path / "head").iter_fit()))
    assert 0 < head.info["val_coverage"] < 1
    row = trial_row(trial_of("t1", {}), status="completed", info=head.info)
    assert row["val_coverage"] == head.info["val_coverage"]
