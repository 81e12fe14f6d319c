"""Truncated BPTT (train.stateful) and stream evaluation (data.val_mode: stream)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import SpecError, UsageError
from orchestrator.run.runner import preflight_data
from orchestrator.spec import build_job
from orchestrator.spec.expand import trial_id_for
from rnn.checkpoint import load_checkpoint
from rnn.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from rnn.corpus import load_corpus
from rnn.data import prepare_data
from rnn.data_check import DataError, check_data
from rnn.evaluate import VAL_STREAMS, evaluate
from rnn.events import TrialStatus
from rnn.models import build_model
from rnn.step import TrainStep
from rnn.streams import TrainStreams, stream_length, stream_windows
from rnn.train import Trainer

NO_AUTOCAST = torch.autocast("cpu", enabled=False)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 400), rows=st.integers(1, 40), seq_len=st.integers(1, 50))
def test_stream_windows_predict_every_target_once_each_row_continuing_the_last(n: int, rows: int, seq_len: int) -> None:
    tokens = torch.arange(n)
    seen: list[int] = []
    prev = None
    for window, carry in stream_windows(tokens, rows, seq_len):
        assert window.dtype == torch.long and 2 <= window.shape[1] <= seq_len + 1
        if prev is None:
            assert carry is None  # the first window continues nothing
        elif carry is None:  # row for row, each window's first input is the last one's last target
            assert torch.equal(window[:, 0], prev[:, -1])
        else:  # the leftover tail: one row, continuing one row of the window before
            assert window.shape[0] == 1 and window[0, 0] == prev[carry, -1]
        assert torch.equal(window[:, 1:] - window[:, :-1], torch.ones_like(window[:, 1:]))  # contiguous text
        seen += window[:, 1:].flatten().tolist()
        prev = window
    assert sorted(seen) == list(range(1, n))


def test_stream_windows_of_a_split_without_targets_yield_nothing() -> None:
    assert list(stream_windows(torch.arange(1), 4, 8)) == []


def test_train_streams_continue_each_row_and_start_every_pass_at_a_new_phase() -> None:
    tokens, rows, T = torch.arange(1000), 4, 10
    streams = TrainStreams(tokens, rows, T)
    n = stream_length(1000, rows)  # 249 targets per stream
    generator = torch.Generator().manual_seed(0)
    prev, passes, phases = None, 0, set()
    for _ in range(200):
        window, fresh = streams.next(generator)
        assert window.shape == (rows, T + 1)
        base = torch.arange(rows) * n
        offset = window[:, 0] - base
        assert torch.equal(offset, offset[:1].expand(rows))  # every row at the same position of its stream
        assert int(offset[0]) + T <= n  # a whole window inside the stream
        if fresh:
            passes += 1
            phases.add(int(offset[0]))
            assert int(offset[0]) < T
        else:
            assert prev is not None and torch.equal(window[:, 0], prev[:, -1])
        prev = window
    assert passes >= 7 and len(phases) > 1  # 24 windows a pass; the phase moves


def test_train_streams_refuse_a_split_too_short_for_one_window_per_row() -> None:
    with pytest.raises(DataError, match=r"train.stateful: .* 50 tokens, too few for 8 streams"):
        TrainStreams(torch.arange(50), 8, 16)


def _stream_losses(model: torch.nn.Module, tokens: torch.Tensor, rows: int) -> tuple[float, int]:
    """The stream evaluation written out: each stream in one sequential pass, the tail after the last."""
    n = stream_length(tokens.numel(), rows)
    nll, count = 0.0, 0
    state = None
    for b in range(rows):
        text = tokens[b * n : (b + 1) * n + 1].long()
        logits, state = model.step(text[None, :-1])
        nll += float(F.cross_entropy(logits[0].double(), text[1:], reduction="sum"))
        count += n
    tail = tokens[rows * n :].long()
    if tail.numel() > 1:
        logits, _ = model.step(tail[None, :-1], state)  # continues the last stream
        nll += float(F.cross_entropy(logits[0].double(), tail[1:], reduction="sum"))
        count += tail.numel() - 1
    return nll / count, count


@pytest.mark.parametrize("cell,layer_norm", [("lstm", False), ("gru", False), ("minlstm", False), ("lstm", True)])
def test_stream_evaluation_is_each_stream_read_in_one_pass(cell: str, layer_norm: bool) -> None:
    data_cfg = DataConfig(corpus="builtin", seq_len=16, val_fraction=0.01)
    data = prepare_data(data_cfg)
    torch.manual_seed(0)
    model = build_model(ModelConfig(cell=cell, layer_norm=layer_norm, embedding_dim=16, hidden_size=24, num_layers=2,
                                    dropout=0.0), data.vocab_size)
    model.eval()
    stream = evaluate(model, data, NO_AUTOCAST, rows=64, mode="stream")
    with torch.no_grad():
        expected, count = _stream_losses(model, data.val, VAL_STREAMS)
    assert count == data.num_val_targets
    assert stream.loss == pytest.approx(expected, rel=1e-5)


def _stateful(tmp_path: Path, **train: object) -> RunConfig:
    """A tiny stateful run over a short corpus: 8 streams of 337 characters, 21 windows a pass."""
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(load_corpus("builtin").text[:3000], encoding="utf-8")
    return RunConfig(
        data=DataConfig(corpus=str(corpus), level="char", seq_len=16, val_fraction=0.1, val_mode="stream"),
        model=ModelConfig(cell="lstm", embedding_dim=16, hidden_size=32, num_layers=2, dropout=0.1),
        train=TrainConfig(**{"batch_size": 8, "max_steps": 60, "eval_every": 20, "lr": 3e-3, "scheduler": "onecycle",
                             "stateful": True, "seed": 0, "device": "cpu", "compile": "off", **train}),
    )


@pytest.mark.slow
def test_a_stateful_step_starts_where_the_last_one_ended(tmp_path: Path) -> None:
    cfg = _stateful(tmp_path, lr=1e-9, optimizer="sgd", clip_grad_norm=None)  # the weights barely move
    data = prepare_data(cfg.data)
    torch.manual_seed(0)
    model = build_model(replace(cfg.model, dropout=0.0), data.vocab_size)
    step = TrainStep(model, data, cfg.train, "fp32", cfg.train.batch_size)
    streams = TrainStreams(data.train, cfg.train.batch_size, cfg.data.seq_len)
    generator = torch.Generator().manual_seed(cfg.train.seed)  # the step's own draws, replayed
    state = None
    for _ in range(30):  # past the end of the first pass (21 windows)
        window, fresh = streams.next(generator)
        with torch.no_grad():
            logits, last = model.step(window[:, :-1], None if fresh else state)
        expected = F.cross_entropy(logits.flatten(0, 1), window[:, 1:].flatten())
        losses, _ = step()
        assert float(losses.nll) == pytest.approx(float(expected), rel=1e-5)
        state = last
    assert step.streams is not None and step.streams.position == streams.position


@pytest.mark.slow
@pytest.mark.parametrize("pause_at", [20, 30])  # at an evaluation, and between two (past a pass's end)
def test_a_paused_stateful_run_resumes_as_if_uninterrupted(tmp_path: Path, pause_at: int) -> None:
    cfg = _stateful(tmp_path)
    full = Trainer(cfg, tmp_path / "full").fit()
    events = list(Trainer(cfg, tmp_path / "part").iter_fit(pause_at_step=pause_at))
    assert events[-1].result.status is TrialStatus.PAUSED
    saved = load_checkpoint(tmp_path / "part" / "last.pt")["streams"]
    assert saved["position"] is not None and isinstance(saved["state"], tuple)
    resumed = Trainer(cfg, tmp_path / "resumed").fit(resume_from=tmp_path / "part" / "last.pt")
    assert resumed.status is TrialStatus.COMPLETED
    scheduled = [r for r in resumed.evals if r.step % 20 == 0]
    for a, b in zip(full.evals, scheduled, strict=True):
        assert (b.step, b.val_loss, b.train_loss) == (a.step, a.val_loss, a.train_loss)


@pytest.mark.parametrize("model", [
    {"cell": "gru", "weight_drop": 0.3, "dropout_mode": "locked"},
    {"cell": "rnn"},
    {"cell": "mingru"},
    {"cell": "minlstm", "dropout_mode": "locked"},
    {"cell": "lstm", "layer_norm": True},
])
def test_every_cell_trains_stateful(tmp_path: Path, model: dict[str, object]) -> None:
    cfg = _stateful(tmp_path, max_steps=25, eval_every=25)
    cfg = replace(cfg, model=replace(cfg.model, **model))  # type: ignore[arg-type]
    result = Trainer(cfg, tmp_path / "run").fit()
    assert result.status is TrialStatus.COMPLETED and math.isfinite(result.best_val_loss or math.nan)


def test_a_bidirectional_model_cannot_train_stateful(tmp_path: Path) -> None:
    cfg = _stateful(tmp_path)
    data = prepare_data(cfg.data)
    model = build_model(replace(cfg.model, bidirectional=True), data.vocab_size)
    with pytest.raises(ValueError, match="train.stateful: a bidirectional"):
        TrainStep(model, data, cfg.train, "fp32", 8)


def test_the_new_fields_at_their_defaults_keep_every_trial_id() -> None:
    config = {"data": {"corpus": "builtin"}, "model": {"cell": "lstm"}, "train": {"seed": 0}}
    spelled = {"data": {"corpus": "builtin", "val_mode": "windows"}, "model": {"cell": "lstm"},
               "train": {"seed": 0, "stateful": False}}
    assert trial_id_for("train", spelled) == trial_id_for("train", config)
    assert trial_id_for("train", {**config, "train": {"seed": 0, "stateful": True}}) != trial_id_for("train", config)
    assert trial_id_for("train", {**config, "data": {"corpus": "builtin", "val_mode": "stream"}}) != trial_id_for(
        "train", config)


def _spec_lines(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as info:
        build_job(raw, "s.yaml")
    return info.value.lines()


def test_the_spec_refuses_stateful_training_where_no_state_carries_naming_the_field() -> None:
    base: dict[str, Any] = {"name": "j", "model": {"hidden_size": 32, "embedding_dim": 16},
                            "train": {"max_steps": 10, "stateful": True}}
    assert _spec_lines({**base, "model": {**base["model"], "bidirectional": True}}) == [
        "s.yaml: train.stateful: a bidirectional model's backward stack reads each window from its end, so no state "
        "carries on to the next window; set stateful: false or bidirectional: false"]
    swept = {**base, "sweep": {"grid": {"model.bidirectional": [False, True]}}}
    assert _spec_lines(swept)[0].startswith("s.yaml: sweep.grid.model.bidirectional[1]: makes train.stateful invalid")
    lines = _spec_lines({**base, "data": {"val_mode": "carried"}})
    assert lines == ["s.yaml: data.val_mode: should be 'windows' or 'stream' (got 'carried')"], lines
    job = build_job({**base, "data": {"val_mode": "stream"}})
    trial = job.trials[0].run_config
    assert trial.train.stateful and trial.data.val_mode == "stream"


def test_the_drivers_check_refuses_a_split_too_short_for_the_streams_as_training_would(tmp_path: Path) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text(load_corpus("builtin").text[:1000], encoding="utf-8")  # 900 training characters
    cfg = DataConfig(corpus=str(corpus), level="char", seq_len=16)
    check_data(cfg, cache_dir=tmp_path / "tok", streams=52)  # 52 x 16 + 1 = 833 tokens fit
    with pytest.raises(DataError) as checked:
        check_data(cfg, cache_dir=tmp_path / "tok", streams=64)
    with pytest.raises(DataError) as trained:
        TrainStreams(prepare_data(cfg, cache_dir=tmp_path / "tok").train, 64, 16)
    assert str(checked.value) == str(trained.value)
    assert "train.stateful: the training split has 900 tokens, too few for 64 streams" in str(checked.value)
    job = build_job({"name": "j", "data": {"corpus": str(corpus), "seq_len": 16},
                     "model": {"hidden_size": 16, "embedding_dim": 8},
                     "train": {"max_steps": 5, "batch_size": 64, "stateful": True}})
    with pytest.raises(UsageError, match=r"^data: train.stateful: the training split has 900 tokens"):
        preflight_data(job.trials)
    preflight_data(build_job({"name": "j", "data": {"corpus": str(corpus), "seq_len": 16},
                              "train": {"max_steps": 5, "batch_size": 64}}).trials)  # random windows: fine
